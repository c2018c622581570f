# weft — run `just` to list the recipes.

set shell := ["bash", "-euo", "pipefail", "-c"]

export PATH := justfile_directory() + "/.tools/just/bin:" + env_var("PATH")

# List the recipes.
default:
    @just --list --unsorted

# The lab: three nodes in network namespaces running weftd against a Kubernetes API, pods made through weft-cni, an outside host; prints the seed's tables, a connectivity matrix and two packet walks printed by `weft trace` (pod to pod across nodes, pod to the outside host), then cleans up. Options: --backend vxlan|host-gw|vxlan-direct|udp, --nat iptables-legacy|iptables-nft|nftables, --ip-family ipv4|ipv6|dual (IPv6-only or dual-stack pods; the tables and the matrix per family), --flannel-node NODE (a flannel-made node, then taken over by weftd); `just lab up` keeps it, `just lab down` removes it.
lab *args: deps
    cargo build --release -q -p weft --bin weftd --bin weft --bin weft-cni
    cargo build --release -q -p weft-integration --bin weft-lab
    target/release/weft-lab {{args}}

# A real Kubernetes cluster in network namespaces (kube-apiserver, controller-manager, scheduler; nodes with containerd, kubelet, kube-proxy; an outside host), weft deployed from its image and manifest; prints the nodes, weft's pods and the connectivity matrix (Services included), then removes everything. Options: --nodes N, --manifest legacy|nftables, --kube-dir DIR; `just cluster up` keeps it, `just cluster down` removes it.
cluster *args: deps
    cargo build --release -q -p weft --bin weftd --bin weft --bin weft-cni
    cargo build --release -q -p weft-integration --bin weft-cluster
    target/release/weft-cluster {{args}}

# weft's image as an OCI archive (manifests/Containerfile's runtime stage over binaries built here, on a Debian base made with debootstrap; no registry needed), for `ctr -n k8s.io images import` or `podman load`.
image: deps
    cargo build --release -q -p weft --bin weftd --bin weft --bin weft-cni
    cargo build --release -q -p weft-integration --bin weft-cluster
    target/release/weft-cluster image

# Every check: formatting, clippy, pure and network-namespace tests (the latter need root; they skip without, and fail instead with WEFT_REQUIRE_NETNS=1 as in CI).
test: deps lint
    cargo test --workspace --all-targets -- --nocapture

# The end-to-end suite alone (also part of `just test`): every backend × NAT mode through the lab (IPv4, dual-stack and IPv6-only), mixed flannel/weft clusters, takeover of a flannel node under traffic (also dual-stack, pings in both families), nodes added/removed, weftd restarted under traffic (udp with --take-over: 0 lost), weft status and /metrics against the kernel, weftd against both API servers, the fault tests (SIGKILL while programming 5,000 peers, a second weftd, the underlay recreated, nodes deleted while down, a peer's IP changed, the API down 60 s or restarted under ping), and weft's manifests on a real cluster (both manifests × three host/kube-proxy kinds, rolling update (each new pod taking its node over) and pod deletion under ping, kubectl exec -- weft status, a node joining and leaving, pod churn).
integration: deps
    cargo test -p weft --test e2e --test weftd --test faults --test cluster -- --nocapture

# Formatting and clippy.
lint:
    cargo fmt --all -- --check
    cargo clippy --workspace --all-targets -q -- -D warnings

# Benchmarks (release build, fresh namespaces): prints figures for docs/performance.md. `just bench` runs overlay, dual (a dual-stack node: 5,000 peers in both families), nat, agent and cni; `just bench scale` the scale section (5,000 real-sized Nodes, a few minutes; --scale-nodes N, --idle-secs S); `just bench throughput` TCP over the UDP backend's forwarder vs kernel VXLAN on two namespaces, then pod to pod in the lab for host-gw, vxlan and udp (iperf3, 1 and 4 streams; --tput-secs S, --tput-runs N).
bench *args: deps
    cargo build --release -q -p weft --bin weftd
    cargo build --release -q -p weft --bin weft-cni
    cargo build --release -q -p weft-integration --bin weft-bench
    target/release/weft-bench {{args}}

# Fuzz every target in fuzz/ (cargo fuzz, libFuzzer) for SECS seconds each (default 60), after replaying the inputs kept in fuzz/regressions/<target>/; a crash stops with its input in fuzz/artifacts/<target>/. Installs cargo-fuzz on first use; runs on the stable toolchain (RUSTC_BOOTSTRAP=1 for the sanitizer flags).
fuzz secs="60": deps
    command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
    cd fuzz && for t in $(cargo fuzz list); do \
      echo "== $t"; \
      if compgen -G "regressions/$t/*" >/dev/null; then RUSTC_BOOTSTRAP=1 cargo fuzz run "$t" regressions/$t/* -- -runs=0; fi; \
      RUSTC_BOOTSTRAP=1 cargo fuzz run "$t" -- -max_total_time={{secs}}; \
    done

# Install missing Debian packages and just (no-op when all are there).
deps:
    @bash .ci/deps

# Delete network namespaces that weft runs left behind (only `weft-*` ones).
clean-netns:
    @for ns in $(ip netns list | awk '{print $1}' | grep '^weft-' || true); do ip netns del "$ns" && echo "deleted $ns"; done
