//! The images the test bed imports into its containerd, written as OCI archives locally so no
//! registry is ever contacted: the test image (`busybox-static` and all of its applets), and
//! relaunch's own images built from binaries cargo already made (what the `Dockerfile` builds).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
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
    let config = serde_json::json!({
        "Env": ["PATH=/bin"],
        "Entrypoint": ["/bin/sleep"],
        "Cmd": ["2147483647"],
    });
    write_oci_archive(&layer, &[(TEST_IMAGE.to_string(), config)], out)
}

/// Writes an OCI image-layout archive to `out` holding one image per `(name, config)` in
/// `images`, all with the single layer `layer` (shared, stored once); `config` is the image
/// config's `config` object (Entrypoint, User, Env, ...). `ctr images import` names each image
/// by its `io.containerd.image.name` annotation.
pub fn write_oci_archive(
    layer: &[u8],
    images: &[(String, serde_json::Value)],
    out: &Path,
) -> Result<(), TestbedError> {
    let layer_digest = sha256(layer);
    let mut blobs: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    blobs.insert(layer_digest.clone(), layer.to_vec());
    let mut manifests = Vec::new();
    for (name, image_config) in images {
        let config = serde_json::json!({
            "architecture": "amd64",
            "os": "linux",
            "config": image_config,
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
        manifests.push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": format!("sha256:{manifest_digest}"),
            "size": manifest.len(),
            "annotations": {
                "org.opencontainers.image.ref.name": name,
                "io.containerd.image.name": name,
            },
        }));
        blobs.insert(config_digest, config);
        blobs.insert(manifest_digest, manifest);
    }
    let index = serde_json::json!({"schemaVersion": 2, "manifests": manifests});

    let file = std::fs::File::create(out)?;
    let mut archive = tar::Builder::new(file);
    append_file(
        &mut archive,
        "oci-layout",
        br#"{"imageLayoutVersion":"1.0.0"}"#,
    )?;
    append_file(&mut archive, "index.json", &serde_json::to_vec(&index)?)?;
    for (digest, blob) in &blobs {
        append_file(&mut archive, &format!("blobs/sha256/{digest}"), blob)?;
    }
    archive.into_inner()?;
    Ok(())
}

/// The user relaunch's images run as unless a pod says otherwise (the coordinator's
/// manifest says so too; the agent's overrides it with root for the CRI socket).
pub const IMAGE_USER: u32 = 65532;

/// Where the binaries go in relaunch's images.
pub const IMAGE_BIN_DIR: &str = "usr/local/bin";

/// relaunch's images as the `Dockerfile` builds them, written from already built binaries:
/// for each `(image name, binary)` an image whose entrypoint is that binary, all sharing one
/// layer with every binary, the shared libraries `ldd` lists for them (glibc's libc and libm,
/// libgcc_s and the loader, at the paths the binaries ask for), `/etc/passwd` and
/// `/etc/group` naming the non-root user [`IMAGE_USER`], an empty `/tmp`, and nothing else: no
/// shell. Returns the layer's size in bytes.
pub fn build_relaunch_images(
    images: &[(String, PathBuf)],
    out: &Path,
) -> Result<u64, TestbedError> {
    let mut files: BTreeMap<String, (Vec<u8>, u32)> = BTreeMap::new();
    for (_, binary) in images {
        let name = binary
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .ok_or_else(|| TestbedError::Setup(format!("{} names no file", binary.display())))?;
        let content = std::fs::read(binary).map_err(|e| {
            TestbedError::Setup(format!(
                "cannot read {}: {e}; build it first (cargo build --bins)",
                binary.display()
            ))
        })?;
        files.insert(format!("{IMAGE_BIN_DIR}/{name}"), (content, 0o755));
        for library in shared_libraries(binary)? {
            // Read through symlinks (the loader's path is one on Debian): a plain file at the
            // path the binary names.
            let content = std::fs::read(&library)?;
            let path = library
                .to_string_lossy()
                .trim_start_matches('/')
                .to_string();
            files.insert(path, (content, 0o755));
        }
    }
    files.insert(
        "etc/passwd".into(),
        (
            format!("root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:{IMAGE_USER}:{IMAGE_USER}:nonroot:/home/nonroot:/sbin/nologin\n").into_bytes(),
            0o644,
        ),
    );
    files.insert(
        "etc/group".into(),
        (
            format!("root:x:0:\nnonroot:x:{IMAGE_USER}:\n").into_bytes(),
            0o644,
        ),
    );
    let mut layer = tar::Builder::new(Vec::new());
    let mut dirs: std::collections::BTreeSet<String> =
        ["tmp".to_string(), "home/nonroot".to_string()].into();
    for path in files.keys() {
        let mut parent = Path::new(path).parent();
        while let Some(dir) = parent.filter(|d| !d.as_os_str().is_empty()) {
            dirs.insert(dir.to_string_lossy().into_owned());
            parent = dir.parent();
        }
    }
    for dir in &dirs {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Directory);
        header.set_mode(if dir == "tmp" { 0o1777 } else { 0o755 });
        if dir == "home/nonroot" {
            header.set_uid(u64::from(IMAGE_USER));
            header.set_gid(u64::from(IMAGE_USER));
        }
        header.set_size(0);
        header.set_mtime(0);
        layer.append_data(&mut header, format!("{dir}/"), std::io::empty())?;
    }
    for (path, (content, mode)) in &files {
        let mut header = tar::Header::new_gnu();
        header.set_mode(*mode);
        header.set_size(content.len() as u64);
        header.set_mtime(0);
        layer.append_data(&mut header, path, content.as_slice())?;
    }
    let layer = layer.into_inner()?;
    let configs: Vec<(String, serde_json::Value)> = images
        .iter()
        .map(|(name, binary)| {
            let file = binary
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            (
                name.clone(),
                serde_json::json!({
                    "User": format!("{IMAGE_USER}:{IMAGE_USER}"),
                    "Env": ["PATH=/usr/local/bin"],
                    "Entrypoint": [format!("/{IMAGE_BIN_DIR}/{file}")],
                    "WorkingDir": "/",
                }),
            )
        })
        .collect();
    write_oci_archive(&layer, &configs, out)?;
    Ok(layer.len() as u64)
}

/// The shared libraries `binary` loads, as `ldd` lists them (the vDSO excluded).
fn shared_libraries(binary: &Path) -> Result<Vec<PathBuf>, TestbedError> {
    let out = Command::new("ldd")
        .arg(binary)
        .output()
        .map_err(|e| TestbedError::Setup(format!("cannot run ldd: {e}")))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        // "not a dynamic executable": a static binary needs nothing.
        return Ok(Vec::new());
    }
    Ok(parse_ldd(&text))
}

/// The library paths of `ldd` output: `libc.so.6 => /lib/.../libc.so.6 (0x...)` and the
/// loader's `/lib64/ld-linux-x86-64.so.2 (0x...)`.
fn parse_ldd(text: &str) -> Vec<PathBuf> {
    text.lines()
        .filter_map(|line| {
            let line = line.trim();
            let path = match line.split_once("=>") {
                Some((_, right)) => right.trim(),
                None => line,
            };
            let path = path.split_whitespace().next()?;
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_output_gives_the_libraries_and_the_loader() {
        let text = "\tlinux-vdso.so.1 (0x00007ffd)\n\tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x1)\n\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x2)\n\t/lib64/ld-linux-x86-64.so.2 (0x3)\n";
        assert_eq!(
            parse_ldd(text),
            vec![
                PathBuf::from("/lib/x86_64-linux-gnu/libgcc_s.so.1"),
                PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2"),
            ]
        );
    }
}
