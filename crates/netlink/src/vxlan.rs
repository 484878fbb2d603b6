//! VXLAN devices: create one (what `ip link add NAME type vxlan id VNI local IP dev UPLINK
//! dstport PORT nolearning` sends) and read its settings back. Builders and parsers are pure.

use std::net::Ipv4Addr;

use crate::codec::{self, IfInfoMsg, MessageBuilder};
use crate::codec::{NLM_F_CREATE, NLM_F_EXCL, NLM_F_REQUEST};
use crate::route::ipv4;
use crate::rtnl::{
    IFLA_ADDRESS, IFLA_IFNAME, IFLA_INFO_DATA, IFLA_INFO_KIND, IFLA_LINKINFO, IFLA_MTU,
    RTM_GETLINK, RTM_NEWLINK,
};
use crate::{Error, Handle};

const IFLA_VXLAN_ID: u16 = 1;
const IFLA_VXLAN_LINK: u16 = 3;
const IFLA_VXLAN_LOCAL: u16 = 4;
const IFLA_VXLAN_LEARNING: u16 = 7;
const IFLA_VXLAN_PORT: u16 = 15;

/// The port flannel, Calico and the Linux default (`dstport 0` means 8472 in the kernel,
/// not IANA's 4789) use.
pub const DEFAULT_VXLAN_PORT: u16 = 8472;

/// What to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanLink {
    pub name: String,
    pub vni: u32,
    /// The source address of the outer packets (the node IP).
    pub local: Ipv4Addr,
    /// The uplink's index: outer packets leave through it.
    pub uplink: Option<u32>,
    /// UDP destination port.
    pub port: u16,
    /// Learn remote MACs from received packets; off when the agent programs the FDB.
    pub learning: bool,
    pub mtu: Option<u32>,
    /// A fixed MAC, so the address peers know survives a re-creation.
    pub mac: Option<[u8; 6]>,
}

/// The VXLAN settings of an existing device (IFLA_INFO_DATA).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanInfo {
    pub vni: u32,
    pub local: Option<Ipv4Addr>,
    pub uplink: Option<u32>,
    pub port: u16,
    pub learning: bool,
}

/// RTM_NEWLINK creating `spec`, down (bring it up once it has its address).
pub fn vxlan_create_message(spec: &VxlanLink) -> Vec<u8> {
    let mut b = MessageBuilder::new(RTM_NEWLINK, NLM_F_REQUEST | NLM_F_CREATE | NLM_F_EXCL);
    b.header(&IfInfoMsg::default().to_bytes())
        .attr_str(IFLA_IFNAME, &spec.name);
    if let Some(mtu) = spec.mtu {
        b.attr_u32(IFLA_MTU, mtu);
    }
    if let Some(mac) = spec.mac {
        b.attr(IFLA_ADDRESS, &mac);
    }
    b.nest_begin(IFLA_LINKINFO)
        .attr_str(IFLA_INFO_KIND, "vxlan")
        .nest_begin(IFLA_INFO_DATA);
    b.attr_u32(IFLA_VXLAN_ID, spec.vni)
        .attr(IFLA_VXLAN_LOCAL, &spec.local.octets());
    if let Some(uplink) = spec.uplink {
        b.attr_u32(IFLA_VXLAN_LINK, uplink);
    }
    b.attr_be16(IFLA_VXLAN_PORT, spec.port)
        .attr_u8(IFLA_VXLAN_LEARNING, spec.learning as u8);
    b.nest_end().nest_end();
    b.build()
}

/// The VXLAN settings in an RTM_NEWLINK payload; None if the link is not a VXLAN device.
pub fn parse_vxlan_info(payload: &[u8]) -> Option<VxlanInfo> {
    let linkinfo = codec::find_attr(payload.get(IfInfoMsg::LEN..)?, IFLA_LINKINFO)?;
    let kind = codec::find_attr(linkinfo, IFLA_INFO_KIND).and_then(codec::parse_str)?;
    if kind != "vxlan" {
        return None;
    }
    let data = codec::find_attr(linkinfo, IFLA_INFO_DATA).unwrap_or(&[]);
    let mut info = VxlanInfo {
        vni: 0,
        local: None,
        uplink: None,
        port: DEFAULT_VXLAN_PORT,
        learning: true,
    };
    for (kind, v) in codec::attrs(data) {
        match kind {
            IFLA_VXLAN_ID => info.vni = codec::parse_u32(v)?,
            IFLA_VXLAN_LOCAL => info.local = ipv4(v),
            // 0 means "no uplink bound".
            IFLA_VXLAN_LINK => info.uplink = codec::parse_u32(v).filter(|&i| i != 0),
            IFLA_VXLAN_PORT => info.port = codec::parse_be16(v)?,
            IFLA_VXLAN_LEARNING => info.learning = codec::parse_u8(v)? != 0,
            _ => {}
        }
    }
    Some(info)
}

impl Handle {
    /// Creates the VXLAN device `spec` (down). EEXIST surfaces with [`Error::is_exists`]:
    /// the caller compares the existing device with [`Handle::vxlan_info`] and decides.
    pub fn create_vxlan(&mut self, spec: &VxlanLink) -> Result<(), Error> {
        self.ack(
            vxlan_create_message(spec),
            format!(
                "create vxlan {} (vni {}, local {}, port {})",
                spec.name, spec.vni, spec.local, spec.port
            ),
        )
    }

    /// The VXLAN settings of link `index`; None if it is missing or not a VXLAN device.
    pub fn vxlan_info(&mut self, index: u32) -> Result<Option<VxlanInfo>, Error> {
        let b = IfInfoMsg::link(index).request(RTM_GETLINK);
        match self.socket().request(b.build()) {
            Ok(replies) => Ok(replies.iter().find_map(|p| parse_vxlan_info(p))),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e.context(format!("read vxlan settings of link #{index}"))),
        }
    }
}

#[cfg(all(test, target_endian = "little"))]
mod tests {
    use super::*;

    fn spec() -> VxlanLink {
        VxlanLink {
            name: "twl.1".into(),
            vni: 1,
            local: Ipv4Addr::new(192, 0, 2, 11),
            uplink: Some(2),
            port: DEFAULT_VXLAN_PORT,
            learning: false,
            mtu: Some(1450),
            mac: Some([0x0a, 0x54, 192, 0, 2, 11]),
        }
    }

    #[test]
    fn create_message_bytes() {
        let msg = vxlan_create_message(&spec());
        #[rustfmt::skip]
        let want: Vec<u8> = vec![
            124, 0, 0, 0,  16, 0,  0x01, 0x06,  0, 0, 0, 0,  0, 0, 0, 0,
            0, 0, 0, 0,  0, 0, 0, 0,  0, 0, 0, 0,  0, 0, 0, 0,
            10, 0, 3, 0,  b't', b'w', b'l', b'.', b'1', 0, 0, 0,
            8, 0, 4, 0,  0xaa, 0x05, 0, 0,
            10, 0, 1, 0,  0x0a, 0x54, 192, 0, 2, 11, 0, 0,
            60, 0, 18, 0,                                   // IFLA_LINKINFO
              10, 0, 1, 0,  b'v', b'x', b'l', b'a', b'n', 0, 0, 0,
              44, 0, 2, 0,                                  // IFLA_INFO_DATA
                8, 0, 1, 0,  1, 0, 0, 0,                    // VNI 1
                8, 0, 4, 0,  192, 0, 2, 11,                 // LOCAL
                8, 0, 3, 0,  2, 0, 0, 0,                    // LINK #2
                6, 0, 15, 0,  0x21, 0x18, 0, 0,             // PORT 8472, big endian
                5, 0, 7, 0,  0, 0, 0, 0,                    // LEARNING off
        ];
        assert_eq!(msg, want);
    }

    #[test]
    fn created_settings_parse_back() {
        let s = spec();
        let msg = vxlan_create_message(&s);
        assert_eq!(
            parse_vxlan_info(&msg[16..]),
            Some(VxlanInfo {
                vni: 1,
                local: Some(s.local),
                uplink: Some(2),
                port: 8472,
                learning: false,
            })
        );
        let mut bridge = MessageBuilder::new(RTM_NEWLINK, 0);
        bridge
            .header(&IfInfoMsg::default().to_bytes())
            .nest_begin(IFLA_LINKINFO)
            .attr_str(IFLA_INFO_KIND, "bridge")
            .nest_end();
        assert_eq!(parse_vxlan_info(&bridge.build()[16..]), None);
        assert_eq!(parse_vxlan_info(&[0; 8]), None);
    }
}
