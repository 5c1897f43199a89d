//! The API-data volumes (`secret`, `configMap`, `downwardAPI`, `projected`): what files they hold,
//! and the kubelet's atomic writer that puts them on the node. The writer keeps the files in a
//! timestamped directory `..<time>`, points `..data` at it, and shows each top-level entry as a
//! symlink through `..data`; an update writes a new directory and swaps `..data` with one rename,
//! so a reader sees the old set or the new one, never a mix (pkg/volume/util/atomic_writer.go).

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::net::Ipv4Addr;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Component, Path};

use k8s_openapi::api::core::v1::{KeyToPath, Pod, Volume};

use super::downward::{Objects, config_map_entries, field_value, resource_value, secret_entries};

/// Files of a volume: relative path → (content, mode).
pub type Payload = BTreeMap<String, (Vec<u8>, u32)>;

/// The API's default file mode for these volumes (0644).
const DEFAULT_MODE: u32 = 0o644;
/// The token a projected `serviceAccountToken` source asks for when it names no expiry.
pub const DEFAULT_TOKEN_SECONDS: i64 = 3600;

/// A `serviceAccountToken` projection: the token the kubelet must request for it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TokenSource {
    /// Empty: the API server's own audience.
    pub audience: String,
    pub expiration_seconds: i64,
    pub path: String,
}

/// Whether `volume` is one the atomic writer fills.
pub fn is_api_data(volume: &Volume) -> bool {
    volume.secret.is_some()
        || volume.config_map.is_some()
        || volume.downward_api.is_some()
        || volume.projected.is_some()
}

/// The service-account tokens `volume` projects.
pub fn token_sources(volume: &Volume) -> Vec<TokenSource> {
    volume
        .projected
        .iter()
        .flat_map(|p| p.sources.iter().flatten())
        .filter_map(|s| s.service_account_token.as_ref())
        .map(|t| TokenSource {
            audience: t.audience.clone().unwrap_or_default(),
            expiration_seconds: t.expiration_seconds.unwrap_or(DEFAULT_TOKEN_SECONDS),
            path: t.path.clone(),
        })
        .collect()
}

/// The files of `volume` of `pod` now, with `tokens` holding the token of each of its
/// [`token_sources`] by path. `Err` is the kubelet's FailedMount message.
pub fn payload(
    pod: &Pod,
    volume: &Volume,
    node_ip: Ipv4Addr,
    objects: &dyn Objects,
    tokens: &BTreeMap<String, String>,
) -> Result<Payload, String> {
    let namespace = pod.metadata.namespace.as_deref().unwrap_or_default();
    let mut files = Payload::new();
    if let Some(source) = &volume.secret {
        let name = source.secret_name.clone().unwrap_or_default();
        let mode = mode_of(source.default_mode);
        match objects.secret(namespace, &name) {
            Some(secret) => project(
                &mut files,
                secret_entries(&secret),
                source.items.as_deref(),
                mode,
                "secret",
                source.optional == Some(true),
            )?,
            None if source.optional == Some(true) => {}
            None => return Err(format!("secret \"{name}\" not found")),
        }
    } else if let Some(source) = &volume.config_map {
        let mode = mode_of(source.default_mode);
        match objects.config_map(namespace, &source.name) {
            Some(cm) => project(
                &mut files,
                config_map_entries(&cm),
                source.items.as_deref(),
                mode,
                "configmap",
                source.optional == Some(true),
            )?,
            None if source.optional == Some(true) => {}
            None => return Err(format!("configmap \"{}\" not found", source.name)),
        }
    } else if let Some(source) = &volume.downward_api {
        let mode = mode_of(source.default_mode);
        for item in source.items.iter().flatten() {
            let value = downward_item(pod, node_ip, item)?;
            files.insert(
                item.path.clone(),
                (value.into_bytes(), item.mode.map_or(mode, to_mode)),
            );
        }
    } else if let Some(projected) = &volume.projected {
        let mode = mode_of(projected.default_mode);
        for source in projected.sources.iter().flatten() {
            if let Some(s) = &source.secret {
                match objects.secret(namespace, &s.name) {
                    Some(secret) => project(
                        &mut files,
                        secret_entries(&secret),
                        s.items.as_deref(),
                        mode,
                        "secret",
                        s.optional == Some(true),
                    )?,
                    None if s.optional == Some(true) => {}
                    None => return Err(format!("secret \"{}\" not found", s.name)),
                }
            }
            if let Some(c) = &source.config_map {
                match objects.config_map(namespace, &c.name) {
                    Some(cm) => project(
                        &mut files,
                        config_map_entries(&cm),
                        c.items.as_deref(),
                        mode,
                        "configmap",
                        c.optional == Some(true),
                    )?,
                    None if c.optional == Some(true) => {}
                    None => return Err(format!("configmap \"{}\" not found", c.name)),
                }
            }
            if let Some(d) = &source.downward_api {
                for item in d.items.iter().flatten() {
                    let value = downward_item(pod, node_ip, item)?;
                    files.insert(
                        item.path.clone(),
                        (value.into_bytes(), item.mode.map_or(mode, to_mode)),
                    );
                }
            }
            if let Some(t) = &source.service_account_token {
                let token = tokens
                    .get(&t.path)
                    .ok_or_else(|| format!("no token for {}", t.path))?;
                // The kubelet writes tokens 0600 unless the pod says otherwise.
                let token_mode = if projected.default_mode.is_some() {
                    mode
                } else {
                    0o600
                };
                files.insert(t.path.clone(), (token.clone().into_bytes(), token_mode));
            }
        }
    }
    for path in files.keys() {
        check_path(path)?;
    }
    Ok(files)
}

fn downward_item(
    pod: &Pod,
    node_ip: Ipv4Addr,
    item: &k8s_openapi::api::core::v1::DownwardAPIVolumeFile,
) -> Result<String, String> {
    if let Some(field) = &item.field_ref {
        return field_value(pod, node_ip, field);
    }
    if let Some(field) = &item.resource_field_ref {
        let name = field.container_name.clone().unwrap_or_default();
        let container = pod
            .spec
            .iter()
            .flat_map(|s| {
                s.containers
                    .iter()
                    .chain(s.init_containers.iter().flatten())
            })
            .find(|c| c.name == name)
            .ok_or_else(|| format!("container {name:?} not found"))?;
        return resource_value(container, field);
    }
    Ok(String::new())
}

/// Adds a ConfigMap's or Secret's entries: all keys, or the listed `items` at their paths.
fn project(
    files: &mut Payload,
    mut entries: BTreeMap<String, Vec<u8>>,
    items: Option<&[KeyToPath]>,
    mode: u32,
    what: &str,
    optional: bool,
) -> Result<(), String> {
    match items {
        Some(items) if !items.is_empty() => {
            for item in items {
                match entries.remove(&item.key) {
                    Some(value) => {
                        files.insert(item.path.clone(), (value, item.mode.map_or(mode, to_mode)));
                    }
                    None if optional => {}
                    None => {
                        return Err(format!(
                            "{what} references non-existent config key: {}",
                            item.key
                        ));
                    }
                }
            }
        }
        _ => {
            for (key, value) in entries {
                files.insert(key, (value, mode));
            }
        }
    }
    Ok(())
}

fn mode_of(default_mode: Option<i32>) -> u32 {
    default_mode.map_or(DEFAULT_MODE, to_mode)
}

fn to_mode(mode: i32) -> u32 {
    u32::try_from(mode).unwrap_or(DEFAULT_MODE) & 0o777
}

/// A relative path without `..` components, as the API validates.
fn check_path(path: &str) -> Result<(), String> {
    let p = Path::new(path);
    let ok = !path.is_empty()
        && !path.starts_with("..")
        && p.components().all(|c| matches!(c, Component::Normal(_)));
    if ok {
        Ok(())
    } else {
        Err(format!("invalid path {path:?} in volume"))
    }
}

/// Sets up a `hostPath` volume by its `type`, as the kubelet's checks do: `DirectoryOrCreate`
/// and `FileOrCreate` create what is missing (0755 directory, 0644 empty file), `Directory`,
/// `File`, `Socket`, `CharDevice` and `BlockDevice` must already be that. An empty type skips the
/// checks (the simulator then creates a missing directory, where runc would fail the mount).
pub fn host_path(path: &Path, type_: &str) -> Result<(), String> {
    use std::os::unix::fs::FileTypeExt;
    let meta = std::fs::metadata(path);
    let is =
        |check: fn(&std::fs::FileType) -> bool| meta.as_ref().is_ok_and(|m| check(&m.file_type()));
    let fail = |what: &str| {
        Err(format!(
            "hostPath type check failed: {} is not a {what}",
            path.display()
        ))
    };
    match type_ {
        "" => Ok(()),
        "DirectoryOrCreate" => {
            if meta.is_err() {
                std::fs::create_dir_all(path).map_err(|e| e.to_string())?;
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
                    .map_err(|e| e.to_string())?;
            } else if !is(std::fs::FileType::is_dir) {
                return fail("directory");
            }
            Ok(())
        }
        "FileOrCreate" => {
            if meta.is_err() {
                std::fs::write(path, b"").map_err(|e| e.to_string())?;
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644))
                    .map_err(|e| e.to_string())?;
            } else if !is(std::fs::FileType::is_file) {
                return fail("file");
            }
            Ok(())
        }
        "Directory" if is(std::fs::FileType::is_dir) => Ok(()),
        "Directory" => fail("directory"),
        "File" if is(std::fs::FileType::is_file) => Ok(()),
        "File" => fail("file"),
        "Socket" if is(std::fs::FileType::is_socket) => Ok(()),
        "Socket" => fail("socket"),
        "CharDevice" if is(std::fs::FileType::is_char_device) => Ok(()),
        "CharDevice" => fail("character device"),
        "BlockDevice" if is(std::fs::FileType::is_block_device) => Ok(()),
        "BlockDevice" => fail("block device"),
        other => Err(format!("unsupported hostPath type {other:?}")),
    }
}

/// What the volume directory shows now (through `..data`), or `None` if it was never written.
pub fn current(dir: &Path) -> io::Result<Option<Payload>> {
    let data = dir.join("..data");
    if std::fs::symlink_metadata(&data).is_err() {
        return Ok(None);
    }
    let mut files = Payload::new();
    read_tree(&data, &data, &mut files)?;
    Ok(Some(files))
}

fn read_tree(root: &Path, dir: &Path, files: &mut Payload) -> io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        let meta = std::fs::metadata(&path)?;
        if meta.is_dir() {
            read_tree(root, &path, files)?;
        } else {
            let relative = path
                .strip_prefix(root)
                .map_err(io::Error::other)?
                .to_string_lossy()
                .into_owned();
            let mode = meta.permissions().mode() & 0o777;
            files.insert(relative, (std::fs::read(&path)?, mode));
        }
    }
    Ok(())
}

/// Puts `payload` in `dir` with the atomic writer; returns whether anything changed.
#[cfg(test)]
pub fn write(dir: &Path, payload: &Payload) -> io::Result<bool> {
    write_owned(dir, payload, None)
}

/// The pod's `fsGroup` applied to a payload's modes, as the kubelet's `SetVolumeOwnership` does
/// for read-only volumes: every file also readable by the group (`| 0440`).
pub fn with_fs_group_modes(payload: Payload) -> Payload {
    payload
        .into_iter()
        .map(|(path, (content, mode))| (path, (content, mode | 0o440)))
        .collect()
}

/// [`write`], with the files and directories owned by group `fs_group` when the pod sets one
/// (apply [`with_fs_group_modes`] to the payload first), so a non-root container whose
/// supplemental groups include it can read them (a Secret with `defaultMode: 0440`).
pub fn write_owned(dir: &Path, payload: &Payload, fs_group: Option<u32>) -> io::Result<bool> {
    std::fs::create_dir_all(dir)?;
    let chgrp = |path: &Path| -> io::Result<()> {
        match fs_group {
            Some(gid) => std::os::unix::fs::lchown(path, None, Some(gid)),
            None => Ok(()),
        }
    };
    chgrp(dir)?;
    if current(dir)?.as_ref() == Some(payload) {
        return Ok(false);
    }
    let now = jiff::Timestamp::now();
    let stamp = format!(
        "..{}.{:09}",
        now.strftime("%Y_%m_%d_%H_%M_%S"),
        now.subsec_nanosecond()
    );
    let fresh = dir.join(&stamp);
    std::fs::create_dir(&fresh)?;
    chgrp(&fresh)?;
    for (path, (content, mode)) in payload {
        let file = fresh.join(path);
        if let Some(parent) = file.parent() {
            std::fs::create_dir_all(parent)?;
            chgrp(parent)?;
        }
        std::fs::write(&file, content)?;
        chgrp(&file)?;
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(*mode))?;
    }
    let data = dir.join("..data");
    let old = std::fs::read_link(&data).ok();
    let tmp = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    symlink(&stamp, &tmp)?;
    std::fs::rename(&tmp, &data)?;
    let visible: BTreeSet<String> = payload
        .keys()
        .filter_map(|p| p.split('/').next().map(str::to_string))
        .collect();
    for name in &visible {
        let link = dir.join(name);
        if std::fs::symlink_metadata(&link).is_err() {
            symlink(Path::new("..data").join(name), &link)?;
        }
    }
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with("..") && !visible.contains(&name) {
            std::fs::remove_file(entry.path())?;
        }
    }
    if let Some(old) = old.filter(|o| o.as_path() != Path::new(&stamp)) {
        let _ = std::fs::remove_dir_all(dir.join(old));
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{ConfigMap, Secret};
    use serde_json::json;

    struct One(ConfigMap, Secret);

    impl Objects for One {
        fn config_map(&self, _: &str, name: &str) -> Option<ConfigMap> {
            (name == "cfg").then(|| self.0.clone())
        }
        fn secret(&self, _: &str, name: &str) -> Option<Secret> {
            (name == "tls").then(|| self.1.clone())
        }
    }

    fn objects() -> One {
        One(
            serde_json::from_value(json!({"data": {"a.conf": "A", "b.conf": "B"}})).unwrap(),
            serde_json::from_value(json!({"data": {"tls.crt": "Y2VydA==", "tls.key": "a2V5"}}))
                .unwrap(),
        )
    }

    fn pod() -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "web-0", "namespace": "shop", "labels": {"app": "web"}},
            "spec": {"containers": [{"name": "web"}]},
        }))
        .unwrap()
    }

    fn volume(v: serde_json::Value) -> Volume {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn projected_sources_combine_with_modes() {
        let v = volume(json!({"name": "all", "projected": {"sources": [
            {"serviceAccountToken": {"path": "token", "audience": "relaunch", "expirationSeconds": 7200}},
            {"configMap": {"name": "cfg", "items": [{"key": "a.conf", "path": "conf/a"}]}},
            {"secret": {"name": "tls", "items": [{"key": "tls.key", "path": "key", "mode": 0o400}]}},
            {"downwardAPI": {"items": [{"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}}]}},
        ]}}));
        assert_eq!(
            token_sources(&v),
            [TokenSource {
                audience: "relaunch".into(),
                expiration_seconds: 7200,
                path: "token".into()
            }]
        );
        let tokens = BTreeMap::from([("token".to_string(), "t0k3n".to_string())]);
        let files = payload(&pod(), &v, Ipv4Addr::LOCALHOST, &objects(), &tokens).unwrap();
        assert_eq!(files["token"], (b"t0k3n".to_vec(), 0o600));
        assert_eq!(files["conf/a"], (b"A".to_vec(), 0o644));
        assert_eq!(files["key"], (b"key".to_vec(), 0o400));
        assert_eq!(files["labels"], (b"app=\"web\"".to_vec(), 0o644));
        assert_eq!(files.len(), 4);
    }

    #[test]
    fn missing_objects_and_keys_fail_the_mount_unless_optional() {
        let none = BTreeMap::new();
        let missing = volume(json!({"name": "c", "configMap": {"name": "nope"}}));
        assert_eq!(
            payload(&pod(), &missing, Ipv4Addr::LOCALHOST, &objects(), &none).unwrap_err(),
            "configmap \"nope\" not found"
        );
        let optional =
            volume(json!({"name": "c", "configMap": {"name": "nope", "optional": true}}));
        assert!(
            payload(&pod(), &optional, Ipv4Addr::LOCALHOST, &objects(), &none)
                .unwrap()
                .is_empty()
        );
        let key = volume(json!({"name": "s", "secret": {"secretName": "tls",
            "items": [{"key": "ca.crt", "path": "ca.crt"}]}}));
        assert_eq!(
            payload(&pod(), &key, Ipv4Addr::LOCALHOST, &objects(), &none).unwrap_err(),
            "secret references non-existent config key: ca.crt"
        );
    }

    #[test]
    fn host_path_types_create_or_check() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("var/lib/relaunch");
        assert!(host_path(&state, "Directory").is_err());
        host_path(&state, "DirectoryOrCreate").unwrap();
        assert!(state.is_dir());
        host_path(&state, "Directory").unwrap();
        assert!(host_path(&state, "File").is_err());
        let file = state.join("lock");
        host_path(&file, "FileOrCreate").unwrap();
        assert!(file.is_file());
        host_path(&file, "File").unwrap();
        assert!(host_path(&file, "DirectoryOrCreate").is_err());
        assert!(host_path(&file, "Socket").is_err());
        host_path(&dir.path().join("anything"), "").unwrap();
        assert!(host_path(&file, "Weird").is_err());
    }

    #[test]
    fn the_writer_swaps_data_atomically_and_drops_removed_keys() {
        let dir = tempfile::tempdir().unwrap();
        let vol = dir.path().join("cfg");
        let first = Payload::from([
            ("a".to_string(), (b"1".to_vec(), 0o644)),
            ("sub/b".to_string(), (b"2".to_vec(), 0o600)),
        ]);
        assert!(write(&vol, &first).unwrap());
        assert_eq!(std::fs::read_to_string(vol.join("a")).unwrap(), "1");
        assert_eq!(std::fs::read_to_string(vol.join("sub/b")).unwrap(), "2");
        assert_eq!(
            std::fs::read_link(vol.join("a")).unwrap(),
            Path::new("..data/a")
        );
        let target = std::fs::read_link(vol.join("..data")).unwrap();
        assert!(target.to_string_lossy().starts_with(".."));
        assert!(!write(&vol, &first).unwrap(), "unchanged: nothing written");
        assert_eq!(std::fs::read_link(vol.join("..data")).unwrap(), target);

        let second = Payload::from([("a".to_string(), (b"changed".to_vec(), 0o644))]);
        assert!(write(&vol, &second).unwrap());
        assert_eq!(std::fs::read_to_string(vol.join("a")).unwrap(), "changed");
        assert!(
            std::fs::symlink_metadata(vol.join("sub")).is_err(),
            "removed key gone"
        );
        assert!(!vol.join(&target).exists(), "the old generation is removed");
        assert_eq!(current(&vol).unwrap(), Some(second));
    }

    #[test]
    fn fs_group_owns_the_files_and_makes_them_group_readable() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let payload: Payload = [("tls.key".to_string(), (b"k".to_vec(), 0o400))].into();
        let payload = with_fs_group_modes(payload);
        write_owned(dir.path(), &payload, Some(65532)).unwrap();
        let meta = std::fs::metadata(dir.path().join("tls.key")).unwrap();
        assert_eq!(meta.gid(), 65532);
        assert_eq!(meta.mode() & 0o777, 0o440);
        // Written again unchanged: nothing to do.
        assert!(!write_owned(dir.path(), &payload, Some(65532)).unwrap());
    }
}
