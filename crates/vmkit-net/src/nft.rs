//! The NAT mode's nftables table, through the `nftables` crate (JSON
//! through the `nft` binary).
//!
//! Each NAT network has its own table, `ip vmkit_nat_<bridge>`, so that
//! tearing it down is one atomic `delete table` that touches nothing else.
//! Its masquerade rule carries a comment recording the uplink and whether
//! vmkit turned forwarding on there, so that the last NAT network on an
//! uplink restores it.

use std::borrow::Cow;
use std::net::Ipv4Addr;

use nftables::batch::Batch;
use nftables::expr::{
    Expression, Meta, MetaKey, NamedExpression, Payload, PayloadField, Prefix, CT,
};
use nftables::helper::{self, NftablesError};
use nftables::schema::{Chain, NfListObject, NfObject, Rule, Table};
use nftables::stmt::{Match, Operator, Statement};
use nftables::types::{NfChainPolicy, NfChainType, NfFamily, NfHook};

/// The prefix of every table vmkit creates.
pub const TABLE_PREFIX: &str = "vmkit_nat_";
/// The start of the comment on a NAT table's masquerade rule.
const MARK: &str = "vmkit-net uplink=";

/// Errors running `nft`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NftError {
    /// `nft` failed or could not be run (is the `nftables` package installed?).
    #[error("nft: {action} table {table}")]
    Nft {
        /// What was being done.
        action: &'static str,
        /// The table.
        table: String,
        /// The error (boxed: it carries `nft`'s output).
        #[source]
        source: Box<NftablesError>,
    },
}

/// The name of the NAT table of `bridge`.
pub fn table_name(bridge: &str) -> String {
    format!("{TABLE_PREFIX}{bridge}")
}

/// What a NAT table encodes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct NatRules {
    pub table: String,
    pub bridge: String,
    pub uplink: String,
    pub network: Ipv4Addr,
    pub prefix_len: u8,
    /// vmkit turned forwarding on on the uplink (restore it when the last
    /// NAT network on that uplink goes).
    pub forwarding_was_off: bool,
}

fn s(v: &str) -> Expression<'static> {
    Expression::String(Cow::Owned(v.to_string()))
}

fn meta(key: MetaKey) -> Expression<'static> {
    Expression::Named(NamedExpression::Meta(Meta { key }))
}

fn ip(field: &'static str) -> Expression<'static> {
    Expression::Named(NamedExpression::Payload(Payload::PayloadField(
        PayloadField {
            protocol: Cow::Borrowed("ip"),
            field: Cow::Borrowed(field),
        },
    )))
}

fn m(left: Expression<'static>, op: Operator, right: Expression<'static>) -> Statement<'static> {
    Statement::Match(Match { left, right, op })
}

fn mark(uplink: &str, was_off: bool) -> String {
    format!(
        "{MARK}{uplink} forwarding-was={}",
        if was_off { 0 } else { 1 }
    )
}

/// Parses a mark: `(uplink, forwarding_was_off)`.
fn parse_mark(comment: &str) -> Option<(String, bool)> {
    let rest = comment.strip_prefix(MARK)?;
    let (uplink, was) = rest.split_once(" forwarding-was=")?;
    match was {
        "0" => Some((uplink.to_string(), true)),
        "1" => Some((uplink.to_string(), false)),
        _ => None,
    }
}

fn table(name: &str) -> Table<'static> {
    Table {
        family: NfFamily::IP,
        name: Cow::Owned(name.to_string()),
        handle: None,
    }
}

fn rule(
    table: &str,
    chain: &str,
    expr: Vec<Statement<'static>>,
    comment: Option<String>,
) -> Rule<'static> {
    Rule {
        family: NfFamily::IP,
        table: Cow::Owned(table.to_string()),
        chain: Cow::Owned(chain.to_string()),
        expr: Cow::Owned(expr),
        handle: None,
        index: None,
        comment: comment.map(Cow::Owned),
    }
}

fn base_chain(
    table: &str,
    name: &str,
    kind: NfChainType,
    hook: NfHook,
    prio: i32,
) -> Chain<'static> {
    Chain {
        family: NfFamily::IP,
        table: Cow::Owned(table.to_string()),
        name: Cow::Owned(name.to_string()),
        _type: Some(kind),
        hook: Some(hook),
        prio: Some(prio),
        policy: Some(NfChainPolicy::Accept),
        ..Chain::default()
    }
}

/// Creates (or atomically replaces) the NAT table:
///
/// ```text
/// table ip vmkit_nat_<bridge> {
///   chain postrouting { type nat hook postrouting priority srcnat; policy accept;
///     ip saddr <subnet> ip daddr != <subnet> oifname "<uplink>" masquerade comment "<mark>" }
///   chain forward { type filter hook forward priority filter; policy accept;
///     iifname "<bridge>" oifname "<uplink>" ip saddr <subnet> accept
///     iifname "<uplink>" oifname "<bridge>" ip daddr <subnet> ct state established,related accept
///     iifname "<bridge>" drop
///     oifname "<bridge>" drop }
/// }
/// ```
///
/// Forwarding is allowed for the subnet only, out through the uplink, and
/// back in for connections it opened; the policies stay `accept` so that
/// traffic that is not the subnet's is left to the host's own rules.
pub(crate) fn apply_nat(r: &NatRules) -> Result<(), NftError> {
    let t = r.table.as_str();
    let subnet = || {
        Expression::Named(NamedExpression::Prefix(Prefix {
            addr: Box::new(s(&r.network.to_string())),
            len: u32::from(r.prefix_len),
        }))
    };
    let mut b = Batch::new();
    // add + delete + add: replaces an earlier version atomically, and
    // does not fail when there is none.
    b.add(NfListObject::Table(table(t)));
    b.delete(NfListObject::Table(table(t)));
    b.add(NfListObject::Table(table(t)));
    b.add(NfListObject::Chain(base_chain(
        t,
        "postrouting",
        NfChainType::NAT,
        NfHook::Postrouting,
        100,
    )));
    b.add(NfListObject::Chain(base_chain(
        t,
        "forward",
        NfChainType::Filter,
        NfHook::Forward,
        0,
    )));
    b.add(NfListObject::Rule(rule(
        t,
        "postrouting",
        vec![
            m(ip("saddr"), Operator::EQ, subnet()),
            m(ip("daddr"), Operator::NEQ, subnet()),
            m(meta(MetaKey::Oifname), Operator::EQ, s(&r.uplink)),
            Statement::Masquerade(None),
        ],
        Some(mark(&r.uplink, r.forwarding_was_off)),
    )));
    b.add(NfListObject::Rule(rule(
        t,
        "forward",
        vec![
            m(meta(MetaKey::Iifname), Operator::EQ, s(&r.bridge)),
            m(meta(MetaKey::Oifname), Operator::EQ, s(&r.uplink)),
            m(ip("saddr"), Operator::EQ, subnet()),
            Statement::Accept(None),
        ],
        None,
    )));
    let ct_state = Expression::Named(NamedExpression::CT(CT {
        key: Cow::Borrowed("state"),
        family: None,
        dir: None,
    }));
    b.add(NfListObject::Rule(rule(
        t,
        "forward",
        vec![
            m(meta(MetaKey::Iifname), Operator::EQ, s(&r.uplink)),
            m(meta(MetaKey::Oifname), Operator::EQ, s(&r.bridge)),
            m(ip("daddr"), Operator::EQ, subnet()),
            m(
                ct_state,
                Operator::IN,
                Expression::List(vec![s("established"), s("related")]),
            ),
            Statement::Accept(None),
        ],
        None,
    )));
    for key in [MetaKey::Iifname, MetaKey::Oifname] {
        b.add(NfListObject::Rule(rule(
            t,
            "forward",
            vec![
                m(meta(key), Operator::EQ, s(&r.bridge)),
                Statement::Drop(None),
            ],
            None,
        )));
    }
    helper::apply_ruleset(&b.to_nftables()).map_err(|source| NftError::Nft {
        action: "create",
        table: r.table.clone(),
        source: Box::new(source),
    })
}

/// Deletes table `name` if it exists (idempotent, atomic).
pub(crate) fn delete_table(name: &str) -> Result<(), NftError> {
    let mut b = Batch::new();
    b.add(NfListObject::Table(table(name)));
    b.delete(NfListObject::Table(table(name)));
    helper::apply_ruleset(&b.to_nftables()).map_err(|source| NftError::Nft {
        action: "delete",
        table: name.to_string(),
        source: Box::new(source),
    })
}

/// The names of vmkit's NAT tables.
pub(crate) fn vmkit_tables() -> Result<Vec<String>, NftError> {
    let set = helper::get_current_ruleset_with_args(helper::DEFAULT_NFT, ["list", "tables", "ip"])
        .map_err(|source| NftError::Nft {
            action: "list",
            table: "(all)".to_string(),
            source: Box::new(source),
        })?;
    Ok(set
        .objects
        .iter()
        .filter_map(|o| match o {
            NfObject::ListObject(NfListObject::Table(t))
                if t.family == NfFamily::IP && t.name.starts_with(TABLE_PREFIX) =>
            {
                Some(t.name.to_string())
            }
            _ => None,
        })
        .collect())
}

/// The uplink marks of table `name`: `(uplink, forwarding_was_off)`.
pub(crate) fn marks(name: &str) -> Result<Vec<(String, bool)>, NftError> {
    let set =
        helper::get_current_ruleset_with_args(helper::DEFAULT_NFT, ["list", "table", "ip", name])
            .map_err(|source| NftError::Nft {
            action: "list",
            table: name.to_string(),
            source: Box::new(source),
        })?;
    Ok(set
        .objects
        .iter()
        .filter_map(|o| match o {
            NfObject::ListObject(NfListObject::Rule(r)) => {
                r.comment.as_deref().and_then(parse_mark)
            }
            _ => None,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_round_trip() {
        assert_eq!(parse_mark(&mark("eth0", true)), Some(("eth0".into(), true)));
        assert_eq!(
            parse_mark(&mark("up.1", false)),
            Some(("up.1".into(), false))
        );
        assert_eq!(parse_mark("other comment"), None);
        assert_eq!(parse_mark("vmkit-net uplink=x forwarding-was=2"), None);
    }
}
