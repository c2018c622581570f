//! A peer's Node as any writer may leave it: lines of the input become the
//! backend-type, backend-data and public-ip annotations and the podCIDR(s);
//! turning it into a lease never panics.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut f = text.split('\n');
    let (t, d, ip, cidr, cidrs) = (
        f.next().unwrap_or(""),
        f.next().unwrap_or(""),
        f.next().unwrap_or(""),
        f.next().unwrap_or(""),
        f.next().unwrap_or(""),
    );
    let p = "flannel.alpha.coreos.com";
    let node = serde_json::json!({
        "metadata": {"name": "peer", "annotations": {
            format!("{p}/backend-type"): t,
            format!("{p}/backend-data"): d,
            format!("{p}/public-ip"): ip,
            format!("{p}/public-ip-overwrite"): ip,
            format!("{p}/kube-subnet-manager"): "true"
        }},
        "spec": {"podCIDR": cidr, "podCIDRs": cidrs.split(',').collect::<Vec<_>>()}
    });
    let Ok(node) = serde_json::from_value::<k8s_openapi::api::core::v1::Node>(node) else {
        return;
    };
    let Ok(annotations) = weft::subnet::Annotations::new(p) else {
        return;
    };
    for family in weft_overlay::Family::ALL {
        if let Ok(Some(lease)) = annotations.lease(&node, family) {
            // What the overlay makes of it must not panic either.
            let _ = weft_overlay::VxlanBackendData::parse(&lease.backend_data);
        }
        let _ = weft::subnet::annotations::pod_cidr(&node, family);
    }
});
