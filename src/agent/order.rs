//! Which requests may run now: one per pod, in creation order (creationTimestamp, then name).

use std::collections::BTreeMap;

use jiff::Timestamp;

/// A request as the scheduler sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub uid: String,
    pub namespace: String,
    pub name: String,
    pub pod_name: String,
    pub created: Option<Timestamp>,
    /// Finished in status, or finished by this agent (its report may still be on the way).
    pub finished: bool,
}

/// The request each pod should be working on: the oldest unfinished one per pod.
pub fn heads(candidates: &[Candidate]) -> Vec<&Candidate> {
    let mut per_pod: BTreeMap<(&str, &str), &Candidate> = BTreeMap::new();
    for c in candidates.iter().filter(|c| !c.finished) {
        let key = (c.namespace.as_str(), c.pod_name.as_str());
        match per_pod.get(&key) {
            Some(current) if (current.created, &current.name) <= (c.created, &c.name) => {}
            _ => {
                per_pod.insert(key, c);
            }
        }
    }
    per_pod.into_values().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(name: &str, pod: &str, created: i64, finished: bool) -> Candidate {
        Candidate {
            uid: format!("uid-{name}"),
            namespace: "ns".into(),
            name: name.into(),
            pod_name: pod.into(),
            created: Some(Timestamp::from_second(created).unwrap()),
            finished,
        }
    }

    fn names(v: Vec<&Candidate>) -> Vec<&str> {
        v.into_iter().map(|c| c.name.as_str()).collect()
    }

    #[test]
    fn one_request_per_pod_in_creation_order() {
        let all = [
            c("b", "p", 2, false),
            c("a", "p", 1, false),
            c("x", "q", 5, false),
        ];
        assert_eq!(names(heads(&all)), vec!["a", "x"]);
    }

    #[test]
    fn same_creation_second_orders_by_name() {
        let all = [c("b", "p", 1, false), c("a", "p", 1, false)];
        assert_eq!(names(heads(&all)), vec!["a"]);
    }

    #[test]
    fn the_next_starts_as_soon_as_the_previous_finished_or_is_gone() {
        let all = [
            c("a", "p", 1, true),
            c("b", "p", 2, false),
            c("c", "p", 3, false),
        ];
        assert_eq!(names(heads(&all)), vec!["b"]);
        // `b` deleted: it is simply no longer a candidate.
        let all = [c("a", "p", 1, true), c("c", "p", 3, false)];
        assert_eq!(names(heads(&all)), vec!["c"]);
        assert!(heads(&[c("a", "p", 1, true)]).is_empty());
    }

    #[test]
    fn pods_of_the_same_name_in_other_namespaces_are_independent() {
        let mut other = c("z", "p", 0, false);
        other.namespace = "other".into();
        let all = [c("a", "p", 1, false), other];
        assert_eq!(names(heads(&all)), vec!["a", "z"]);
    }
}
