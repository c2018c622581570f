//! Ethernet MAC addresses as flannel writes them (`aa:bb:cc:dd:ee:ff`).

use std::fmt;
use std::str::FromStr;

/// A 48-bit Ethernet address.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MacAddr(pub [u8; 6]);

/// Why a MAC address text was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a MAC address (want six hex pairs separated by ':')")]
pub struct BadMac(pub String);

impl MacAddr {
    /// The address as a byte slice, as netlink wants it.
    pub fn octets(&self) -> [u8; 6] {
        self.0
    }

    /// Builds an address from netlink bytes; `None` unless exactly six.
    pub fn from_bytes(b: &[u8]) -> Option<MacAddr> {
        <[u8; 6]>::try_from(b).ok().map(MacAddr)
    }

    /// True for a unicast address (I/G bit clear) that is not all zeros.
    pub fn is_unicast(&self) -> bool {
        self.0[0] & 1 == 0 && self.0 != [0; 6]
    }
}

impl FromStr for MacAddr {
    type Err = BadMac;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || BadMac(s.to_string());
        let b = s.as_bytes();
        if b.len() != 17 {
            return Err(bad());
        }
        let hex = |c: u8| match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            b'A'..=b'F' => Some(c - b'A' + 10),
            _ => None,
        };
        let mut out = [0u8; 6];
        for (i, byte) in out.iter_mut().enumerate() {
            let at = i * 3;
            if i > 0 && b[at - 1] != b':' {
                return Err(bad());
            }
            let (hi, lo) = (hex(b[at]).ok_or_else(bad)?, hex(b[at + 1]).ok_or_else(bad)?);
            *byte = hi << 4 | lo;
        }
        Ok(MacAddr(out))
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl fmt::Debug for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl serde::Serialize for MacAddr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for MacAddr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<MacAddr, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn json_is_the_colon_form_both_ways() {
        let mac: super::MacAddr = "0e:2d:50:56:3e:97".parse().unwrap();
        let json = serde_json::to_string(&mac).unwrap();
        assert_eq!(json, "\"0e:2d:50:56:3e:97\"");
        assert_eq!(serde_json::from_str::<super::MacAddr>(&json).unwrap(), mac);
        assert!(serde_json::from_str::<super::MacAddr>("\"nope\"").is_err());
    }

    use super::*;

    #[test]
    fn parses_and_prints_flannel_form() {
        let m: MacAddr = "5a:11:99:ab:8c:22".parse().unwrap();
        assert_eq!(m.to_string(), "5a:11:99:ab:8c:22");
        assert_eq!("5A:11:99:AB:8C:22".parse::<MacAddr>().unwrap(), m);
        assert!(m.is_unicast());
    }

    #[test]
    fn refuses_malformed() {
        for bad in [
            "",
            "5a:11:99:ab:8c",
            "5a:11:99:ab:8c:22:00",
            "zz:11:99:ab:8c:22",
            "5a-11-99-ab-8c-22",
            "5:11:99:ab:8c:22",
        ] {
            assert!(bad.parse::<MacAddr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn multicast_and_zero_are_not_unicast() {
        assert!(!"01:00:5e:00:00:01".parse::<MacAddr>().unwrap().is_unicast());
        assert!(!"00:00:00:00:00:00".parse::<MacAddr>().unwrap().is_unicast());
    }
}
