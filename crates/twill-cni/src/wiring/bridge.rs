//! Bridge wiring (Docker's docker0, CNI's bridge plugin): the node's bridge holds the
//! gateway address of the pod's block; every pod's host veth is one of its ports.

use super::{
    check_failed, configure_pod, create_veth, ensure_sysctl, host_veth, iface, kernel, verify_pod,
    Attached, Expected, Plan,
};
use twill_api::cni::CniError;
use twill_netlink::netns::Netns;
use twill_netlink::route::{Handle, Link};

pub struct Bridge<'a> {
    /// The bridge's name (`bridge` in the config).
    pub name: &'a str,
    /// Hairpin mode on each port: a pod reaches itself through its own host port.
    pub hairpin: bool,
}

impl Bridge<'_> {
    /// Makes sure the bridge exists, is up and holds the gateway address; turns on
    /// forwarding.
    fn ensure_bridge(&self, host: &mut Handle, plan: &Plan<'_>) -> Result<Link, CniError> {
        let bridge = host
            .create_bridge(self.name, Some(plan.mtu))
            .map_err(|e| kernel(&format!("creating bridge {}", self.name), e))?;
        host.add_address(bridge.index, plan.gateway, plan.subnet.prefix_len())
            .map_err(|e| {
                kernel(
                    &format!("adding gateway {} to {}", plan.gateway, self.name),
                    e,
                )
            })?;
        ensure_sysctl("net/ipv4/ip_forward", "1")?;
        if plan.route_localnet {
            // 127.0.0.1:hostPort is DNATed to the pod; the kernel drops martian 127/8
            // sources routed out of a bridge unless route_localnet is on for it (as CNI
            // portmap does).
            ensure_sysctl(&format!("net/ipv4/conf/{}/route_localnet", self.name), "1")?;
        }
        Ok(bridge)
    }

    pub fn attach(
        &self,
        host: &mut Handle,
        pod_ns: &Netns,
        plan: &Plan<'_>,
    ) -> Result<Attached, CniError> {
        let bridge = self.ensure_bridge(host, plan)?;
        let host_link = create_veth(host, pod_ns, plan, Some(bridge.index), None)?;
        if self.hairpin {
            host.set_hairpin(host_link.index, true)
                .map_err(|e| kernel("turning on hairpin mode", e))?;
        }
        let pod_link = configure_pod(pod_ns, plan, plan.subnet.prefix_len(), &[])?;
        let sandbox = pod_ns.path().display().to_string();
        // Read again: the bridge's MTU may have followed its ports.
        let bridge_now = host
            .link_by_index(bridge.index)
            .ok()
            .flatten()
            .unwrap_or(bridge);
        Ok(Attached {
            interfaces: vec![
                iface(&bridge_now, ""),
                iface(&host_link, ""),
                iface(&pod_link, &sandbox),
            ],
            pod: 2,
        })
    }

    /// The pod's address and routes, and its host veth a port of the bridge.
    pub fn verify(
        &self,
        host: &mut Handle,
        pod_ns: &Netns,
        want: &Expected<'_>,
    ) -> Result<(), CniError> {
        verify_pod(pod_ns, want, &[])?;
        let bridge = host
            .link_by_name(self.name)
            .map_err(|e| kernel(&format!("looking up bridge {}", self.name), e))?
            .ok_or_else(|| check_failed(format!("bridge {} is missing", self.name)))?;
        let veth = host_veth(host, want.host_veth)?;
        if veth.master != Some(bridge.index) {
            return Err(check_failed(format!(
                "host veth {} is not attached to bridge {}",
                want.host_veth, self.name
            )));
        }
        Ok(())
    }
}
