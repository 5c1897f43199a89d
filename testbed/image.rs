//! The test image: an OCI archive with `busybox-static` and all of its applets, built locally so
//! no registry is ever contacted.

use std::path::Path;
use std::process::Command;

use sha2::{Digest, Sha256};

use super::TestbedError;

/// Name of the test image, also used as the pod sandbox ("pause") image.
pub const TEST_IMAGE: &str = "relaunch.test/busybox:1";

/// Where Debian's `busybox-static` installs the binary.
pub const BUSYBOX: &str = "/bin/busybox";

/// Writes an OCI image-layout archive of [`TEST_IMAGE`] built from `busybox` to `out`.
///
/// The image's default process sleeps forever, which is what a pod sandbox needs; test
/// containers always give their own command.
pub fn build_test_image(busybox: &Path, out: &Path) -> Result<(), TestbedError> {
    let layer = busybox_layer(busybox)?;
    let layer_digest = sha256(&layer);
    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "Env": ["PATH=/bin"],
            "Entrypoint": ["/bin/sleep"],
            "Cmd": ["2147483647"],
        },
        "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{layer_digest}")]},
    });
    let config = serde_json::to_vec(&config)?;
    let config_digest = sha256(&config);
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": format!("sha256:{config_digest}"),
            "size": config.len(),
        },
        "layers": [{
            "mediaType": "application/vnd.oci.image.layer.v1.tar",
            "digest": format!("sha256:{layer_digest}"),
            "size": layer.len(),
        }],
    });
    let manifest = serde_json::to_vec(&manifest)?;
    let manifest_digest = sha256(&manifest);
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": format!("sha256:{manifest_digest}"),
            "size": manifest.len(),
            "annotations": {
                "org.opencontainers.image.ref.name": TEST_IMAGE,
                "io.containerd.image.name": TEST_IMAGE,
            },
        }],
    });

    let file = std::fs::File::create(out)?;
    let mut archive = tar::Builder::new(file);
    append_file(
        &mut archive,
        "oci-layout",
        br#"{"imageLayoutVersion":"1.0.0"}"#,
    )?;
    append_file(&mut archive, "index.json", &serde_json::to_vec(&index)?)?;
    for (digest, blob) in [
        (&layer_digest, &layer),
        (&config_digest, &config),
        (&manifest_digest, &manifest),
    ] {
        append_file(&mut archive, &format!("blobs/sha256/{digest}"), blob)?;
    }
    archive.into_inner()?;
    Ok(())
}

/// A root filesystem layer: `/bin/busybox`, a symlink per applet, and the usual empty dirs.
fn busybox_layer(busybox: &Path) -> Result<Vec<u8>, TestbedError> {
    let binary = std::fs::read(busybox).map_err(|e| {
        TestbedError::Setup(format!(
            "cannot read {}: {e}; install it with: apt-get install -y busybox-static",
            busybox.display()
        ))
    })?;
    let list = Command::new(busybox).arg("--list").output()?;
    if !list.status.success() {
        return Err(TestbedError::Setup(format!(
            "{} --list failed; is it busybox-static?",
            busybox.display()
        )));
    }
    let applets = String::from_utf8_lossy(&list.stdout);

    let mut layer = tar::Builder::new(Vec::new());
    for dir in ["bin", "dev", "etc", "proc", "sys", "tmp", "var", "data"] {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Directory);
        header.set_mode(if dir == "tmp" { 0o1777 } else { 0o755 });
        header.set_size(0);
        header.set_mtime(0);
        layer.append_data(&mut header, format!("{dir}/"), std::io::empty())?;
    }
    let mut header = tar::Header::new_gnu();
    header.set_mode(0o755);
    header.set_size(binary.len() as u64);
    header.set_mtime(0);
    layer.append_data(&mut header, "bin/busybox", binary.as_slice())?;
    for applet in applets
        .lines()
        .map(str::trim)
        .filter(|a| !a.is_empty() && *a != "busybox")
    {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Symlink);
        header.set_mode(0o777);
        header.set_size(0);
        header.set_mtime(0);
        layer.append_link(&mut header, format!("bin/{applet}"), "busybox")?;
    }
    Ok(layer.into_inner()?)
}

fn append_file<W: std::io::Write>(
    archive: &mut tar::Builder<W>,
    path: &str,
    data: &[u8],
) -> Result<(), TestbedError> {
    let mut header = tar::Header::new_gnu();
    header.set_mode(0o644);
    header.set_size(data.len() as u64);
    header.set_mtime(0);
    archive.append_data(&mut header, path, data)?;
    Ok(())
}

fn sha256(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
