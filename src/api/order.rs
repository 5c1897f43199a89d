//! The text form of a rollout's order, shared by the `relaunch.dev/order` annotation and the
//! plugin's `--order` flag: `ordinal` (highest first; also `ordinal-desc`), `ordinal-asc`, or
//! `role=KEY:FIRST1,FIRST2:LAST1,LAST2`. The annotation takes one term; the flag may be given
//! twice to combine a role order with an ordinal direction.

use std::fmt;
use std::str::FromStr;

use super::{OrdinalOrder, RoleOrder, RolloutOrder};

/// What each order term may be, for error messages.
const TERMS: &str =
    "use ordinal (highest first), ordinal-asc, or role=KEY:FIRST1,FIRST2:LAST1,LAST2";
/// How a role order is written, for error messages.
const ROLE_USAGE: &str =
    "use role=KEY:FIRST1,FIRST2:LAST1,LAST2, e.g. role=role:replica:primary,master";

/// Why an order does not parse. The caller names where the text came from (a flag, an
/// annotation) before the message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidOrder {
    #[error("{term:?}: {TERMS}")]
    UnknownTerm { term: String },
    #[error("role={role}: too many ':'; {ROLE_USAGE}")]
    TooManyParts { role: String },
    #[error("role={role}: {key:?} is not a label key; {ROLE_USAGE}")]
    BadKey { role: String, key: String },
    #[error("role={role}: name values to go first and/or last; {ROLE_USAGE}")]
    NoValues { role: String },
    #[error("role={role}: {value:?} cannot go both first and last")]
    FirstAndLast { role: String, value: String },
    #[error("role=... is given twice")]
    TwoRoles,
    #[error("takes one ordinal direction, not two")]
    TwoDirections,
}

/// `KEY:FIRST1,FIRST2:LAST1,LAST2`; either list may be empty (`KEY::LAST`, `KEY:FIRST`), not
/// both. Spaces around values are ignored.
impl FromStr for RoleOrder {
    type Err = InvalidOrder;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let role = text.trim();
        let mut parts = role.split(':');
        let key = parts.next().unwrap_or_default().trim();
        let first = parts.next().unwrap_or_default();
        let last = parts.next().unwrap_or_default();
        if parts.next().is_some() {
            return Err(InvalidOrder::TooManyParts { role: role.into() });
        }
        if key.is_empty() || key.contains(char::is_whitespace) || key.contains(',') {
            return Err(InvalidOrder::BadKey {
                role: role.into(),
                key: key.into(),
            });
        }
        let list = |s: &str| -> Vec<String> {
            s.split(',')
                .map(str::trim)
                .filter(|v| !v.is_empty())
                .map(str::to_string)
                .collect()
        };
        let (first, last) = (list(first), list(last));
        if first.is_empty() && last.is_empty() {
            return Err(InvalidOrder::NoValues { role: role.into() });
        }
        if let Some(both) = first.iter().find(|v| last.contains(v)) {
            return Err(InvalidOrder::FirstAndLast {
                role: role.into(),
                value: both.clone(),
            });
        }
        Ok(RoleOrder {
            key: key.into(),
            first,
            last,
        })
    }
}

impl fmt::Display for RoleOrder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}",
            self.key,
            self.first.join(","),
            self.last.join(",")
        )
    }
}

/// `ordinal` or `ordinal-desc` (highest first), `ordinal-asc`.
impl FromStr for OrdinalOrder {
    type Err = InvalidOrder;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.trim() {
            "ordinal" | "ordinal-desc" => Ok(OrdinalOrder::OrdinalDescending),
            "ordinal-asc" => Ok(OrdinalOrder::OrdinalAscending),
            other => Err(InvalidOrder::UnknownTerm { term: other.into() }),
        }
    }
}

impl fmt::Display for OrdinalOrder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            OrdinalOrder::OrdinalDescending => "ordinal",
            OrdinalOrder::OrdinalAscending => "ordinal-asc",
            OrdinalOrder::Unknown => "unknown",
        })
    }
}

impl RolloutOrder {
    /// The order the `terms` ask for together: at most one ordinal direction and at most one
    /// `role=...`. No terms: None (the default order).
    pub fn from_terms<'a>(
        terms: impl IntoIterator<Item = &'a str>,
    ) -> Result<Option<RolloutOrder>, InvalidOrder> {
        let mut order = RolloutOrder::default();
        for term in terms {
            let term = term.trim();
            if let Some(role) = term.strip_prefix("role=") {
                if order.role.is_some() {
                    return Err(InvalidOrder::TwoRoles);
                }
                order.role = Some(role.parse()?);
                continue;
            }
            let ordinal = term.parse()?;
            if order.ordinal.is_some() {
                return Err(InvalidOrder::TwoDirections);
            }
            order.ordinal = Some(ordinal);
        }
        Ok((order != RolloutOrder::default()).then_some(order))
    }
}

/// One term: `ordinal`, `ordinal-desc`, `ordinal-asc` or `role=KEY:FIRST:LAST`.
impl FromStr for RolloutOrder {
    type Err = InvalidOrder;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let text = text.trim();
        if let Some(role) = text.strip_prefix("role=") {
            return Ok(RolloutOrder {
                ordinal: None,
                role: Some(role.parse()?),
            });
        }
        Ok(RolloutOrder {
            ordinal: Some(text.parse()?),
            role: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn role(key: &str, first: &[&str], last: &[&str]) -> RoleOrder {
        RoleOrder {
            key: key.into(),
            first: first.iter().map(|s| s.to_string()).collect(),
            last: last.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn ordinal_terms_name_a_direction() {
        assert_eq!("ordinal".parse(), Ok(OrdinalOrder::OrdinalDescending));
        assert_eq!("ordinal-desc".parse(), Ok(OrdinalOrder::OrdinalDescending));
        assert_eq!(" ordinal-asc ".parse(), Ok(OrdinalOrder::OrdinalAscending));
        assert_eq!(
            "sideways".parse::<OrdinalOrder>().unwrap_err().to_string(),
            "\"sideways\": use ordinal (highest first), ordinal-asc, or role=KEY:FIRST1,FIRST2:LAST1,LAST2"
        );
    }

    #[test]
    fn a_role_order_names_a_label_key_and_values_to_go_first_and_last() {
        assert_eq!(
            "role:replica:primary,master".parse(),
            Ok(role("role", &["replica"], &["primary", "master"]))
        );
        assert_eq!(
            "app.kubernetes.io/role::leader".parse(),
            Ok(role("app.kubernetes.io/role", &[], &["leader"]))
        );
        assert_eq!("k:a, b".parse(), Ok(role("k", &["a", "b"], &[])));
        assert_eq!("k:a,,b:".parse(), Ok(role("k", &["a", "b"], &[])));
    }

    #[test]
    fn bad_role_orders_say_what_is_wrong() {
        for (bad, says) in [
            ("", "not a label key"),
            (":a:b", "not a label key"),
            ("a b:x:y", "not a label key"),
            ("a,b:x:y", "not a label key"),
            ("role", "first and/or last"),
            ("role::", "first and/or last"),
            ("role:a:b:c", "too many"),
            ("role:a:a", "both first and last"),
        ] {
            let error = bad.parse::<RoleOrder>().unwrap_err().to_string();
            assert!(error.contains(says), "{bad}: {error}");
        }
    }

    #[test]
    fn one_term_is_an_ordinal_direction_or_a_role_order() {
        assert_eq!(
            "ordinal-asc".parse(),
            Ok(RolloutOrder {
                ordinal: Some(OrdinalOrder::OrdinalAscending),
                role: None
            })
        );
        assert_eq!(
            "role=role::primary".parse(),
            Ok(RolloutOrder {
                ordinal: None,
                role: Some(role("role", &[], &["primary"]))
            })
        );
        assert!("random".parse::<RolloutOrder>().is_err());
        assert!("role=k".parse::<RolloutOrder>().is_err());
    }

    #[test]
    fn terms_combine_one_role_order_with_one_direction() {
        assert_eq!(RolloutOrder::from_terms([]), Ok(None));
        assert_eq!(
            RolloutOrder::from_terms(["role=role:replica:primary", "ordinal-asc"]),
            Ok(Some(RolloutOrder {
                ordinal: Some(OrdinalOrder::OrdinalAscending),
                role: Some(role("role", &["replica"], &["primary"]))
            }))
        );
        assert_eq!(
            RolloutOrder::from_terms(["ordinal", "ordinal-asc"]),
            Err(InvalidOrder::TwoDirections)
        );
        assert_eq!(
            RolloutOrder::from_terms(["role=a:b", "role=c:d"]),
            Err(InvalidOrder::TwoRoles)
        );
    }

    fn value() -> impl Strategy<Value = String> {
        "[A-Za-z0-9][-A-Za-z0-9_.]{0,10}"
    }

    proptest! {
        #[test]
        fn role_orders_read_back_what_they_print(
            key in "[a-z0-9]([-a-z0-9./]{0,20}[a-z0-9])?",
            first in proptest::collection::btree_set(value(), 0..4),
            last in proptest::collection::btree_set(value(), 0..4),
        ) {
            let last: Vec<String> = last.into_iter().filter(|v| !first.contains(v)).collect();
            let first: Vec<String> = first.into_iter().collect();
            prop_assume!(!first.is_empty() || !last.is_empty());
            let order = RoleOrder { key, first, last };
            prop_assert_eq!(order.to_string().parse::<RoleOrder>(), Ok(order));
        }

        #[test]
        fn ordinal_orders_read_back_what_they_print(ascending: bool) {
            let order = if ascending {
                OrdinalOrder::OrdinalAscending
            } else {
                OrdinalOrder::OrdinalDescending
            };
            prop_assert_eq!(order.to_string().parse::<OrdinalOrder>(), Ok(order));
        }
    }
}
