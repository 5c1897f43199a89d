//! The demo "partitioned store" the ScaleDown and drain tests scale down: each member holds its
//! own keys on its claim and takes in keys handed to it through a shared host directory (standing
//! in for the members' own network protocol).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use super::Bed;

/// A store member: seeds its own three keys on first start, then keeps taking in the keys
/// handed to it (`/exchange/inbox-<pod>`) into its volume.
pub const STORE: &str = r#"trap 'exit 0' TERM
if [ ! -f /data/seeded ]; then for i in 1 2 3; do echo "$POD_NAME-$i" > /data/key-$POD_NAME-$i; done; touch /data/seeded; fi
mkdir -p /exchange/inbox-$POD_NAME
touch /tmp/ready
while true; do
  for f in /exchange/inbox-$POD_NAME/key-*; do [ -e "$f" ] && cp "$f" /data/ && rm -f "$f"; done
  sleep 0.2
done"#;

/// The host directory behind claim `claim` of the `default` namespace on node-1 (the kubelet
/// simulator's layout).
pub fn claim_dir(bed: &Bed, claim: &str) -> PathBuf {
    bed.dir()
        .join("nodes")
        .join("node-1")
        .join("volumes/pvc/default")
        .join(claim)
}

/// The keys in a claim's directory.
pub fn keys(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("key-"))
                .collect()
        })
        .unwrap_or_default()
}
