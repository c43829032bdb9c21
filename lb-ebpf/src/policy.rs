//! Allow and deny lists of client networks, checked on every packet to a VIP (so adding a
//! network to a deny list also cuts the flows it already has). Each list is an LPM trie per
//! family whose keys start with a scope, a VIP's index or `LIST_SCOPE_ALL`, so one trie holds
//! every VIP's list and the global one. A VIP with no list in force never gets here (its
//! `VIP_CHECK_SOURCE_LISTS` bit is clear); otherwise `GuardConfig` says which scopes have entries,
//! so only those are looked up.
use lb_common::l4::{
    FAMILY_V4, FlowKey, GuardConfig, L4Event, LIST_SCOPE_ALL, LIST_SCOPE_ALL_BIT, ListKeyV4,
    ListKeyV6, addr_bytes, list_scopes,
};

use crate::maps::{ALLOW_V4, ALLOW_V6, DENY_V4, DENY_V6};

/// Prefix length of a lookup key: the 32 scope bits, then the whole address.
const V4_KEY_BITS: u32 = 32 + 32;
const V6_KEY_BITS: u32 = 32 + 128;

/// Which list refuses the flow's source, if one does: its drop counter. Deny wins over allow.
#[inline(always)]
pub fn refusal(flow: &FlowKey, vip_index: u32, guard: &GuardConfig) -> Option<L4Event> {
    let scopes = list_scopes(vip_index);
    let deny = guard.deny_scopes & scopes;
    if deny != 0 && listed(Which::Deny, flow, vip_index, deny) {
        return Some(L4Event::DenyListDropped);
    }
    let allow = guard.allow_scopes & scopes;
    if allow != 0 && !listed(Which::Allow, flow, vip_index, allow) {
        return Some(L4Event::AllowListDropped);
    }
    None
}

#[derive(Clone, Copy)]
enum Which {
    Deny,
    Allow,
}

/// Whether the source is in the list of any scope in `scopes` (the VIP's own, the global one).
#[inline(always)]
fn listed(which: Which, flow: &FlowKey, vip_index: u32, scopes: u64) -> bool {
    let own = scopes & !LIST_SCOPE_ALL_BIT != 0;
    let global = scopes & LIST_SCOPE_ALL_BIT != 0;
    (own && in_scope(which, flow, vip_index)) || (global && in_scope(which, flow, LIST_SCOPE_ALL))
}

#[inline(always)]
fn in_scope(which: Which, flow: &FlowKey, scope: u32) -> bool {
    let scope = scope.to_be_bytes();
    let addr = addr_bytes(flow.src);
    if flow.family == FAMILY_V4 {
        let key = aya_ebpf::maps::lpm_trie::Key::new(
            V4_KEY_BITS,
            ListKeyV4 {
                scope,
                addr: [addr[0], addr[1], addr[2], addr[3]],
            },
        );
        let trie = match which {
            Which::Deny => &DENY_V4,
            Which::Allow => &ALLOW_V4,
        };
        trie.get(&key).is_some()
    } else {
        let key = aya_ebpf::maps::lpm_trie::Key::new(V6_KEY_BITS, ListKeyV6 { scope, addr });
        let trie = match which {
            Which::Deny => &DENY_V6,
            Which::Allow => &ALLOW_V6,
        };
        trie.get(&key).is_some()
    }
}
