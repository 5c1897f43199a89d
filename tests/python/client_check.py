"""The Python kubernetes client against the test API server (run by tests/python_client.rs).

Usage: client_check.py KUBECONFIG. Exits non-zero with a message on the first failure.
"""

import sys
import threading

from kubernetes import client, config, watch


def main(kubeconfig: str) -> None:
    config.load_kube_config(config_file=kubeconfig)
    core = client.CoreV1Api()
    apps = client.AppsV1Api()
    custom = client.CustomObjectsApi()
    ext = client.ApiextensionsV1Api()

    namespaces = [n.metadata.name for n in core.list_namespace().items]
    assert "default" in namespaces, namespaces

    body = client.V1ConfigMap(metadata=client.V1ObjectMeta(name="py-cm", labels={"from": "python"}), data={"a": "1"})
    created = core.create_namespaced_config_map("default", body)
    assert created.metadata.uid, created

    # A watch started at the list's version sees the next change.
    listed = core.list_namespaced_config_map("default", label_selector="from=python")
    assert [c.metadata.name for c in listed.items] == ["py-cm"], listed
    seen = []

    def watch_changes() -> None:
        w = watch.Watch()
        for event in w.stream(core.list_namespaced_config_map, "default",
                              resource_version=listed.metadata.resource_version, timeout_seconds=10):
            seen.append((event["type"], event["object"].metadata.name))
            w.stop()

    thread = threading.Thread(target=watch_changes)
    thread.start()
    core.patch_namespaced_config_map("py-cm", "default", {"data": {"a": "2"}})
    thread.join(timeout=15)
    assert ("MODIFIED", "py-cm") in seen, seen
    assert core.read_namespaced_config_map("py-cm", "default").data["a"] == "2"

    # Stale updates conflict.
    stale = created
    stale.data = {"a": "3"}
    try:
        core.replace_namespaced_config_map("py-cm", "default", stale)
        raise AssertionError("stale update was accepted")
    except client.ApiException as e:
        assert e.status == 409, e

    sts = {
        "apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "py-sts"},
        "spec": {"replicas": 0, "serviceName": "x", "selector": {"matchLabels": {"app": "py"}},
                 "template": {"metadata": {"labels": {"app": "py"}},
                              "spec": {"containers": [{"name": "c", "image": "relaunch.test/busybox:1"}]}}},
    }
    apps.create_namespaced_stateful_set("default", sts)
    assert apps.read_namespaced_stateful_set("py-sts", "default").spec.pod_management_policy == "OrderedReady"

    crd = {
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "gadgets.example.dev"},
        "spec": {"group": "example.dev", "scope": "Namespaced",
                 "names": {"plural": "gadgets", "singular": "gadget", "kind": "Gadget"},
                 "versions": [{"name": "v1", "served": True, "storage": True, "subresources": {"status": {}},
                               "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}}}]},
    }
    ext.create_custom_resource_definition(crd)
    custom.create_namespaced_custom_object("example.dev", "v1", "default", "gadgets",
                                           {"apiVersion": "example.dev/v1", "kind": "Gadget", "metadata": {"name": "g"}, "spec": {"n": 1}})
    custom.patch_namespaced_custom_object_status("example.dev", "v1", "default", "gadgets", "g", {"status": {"ok": True}})
    gadget = custom.get_namespaced_custom_object("example.dev", "v1", "default", "gadgets", "g")
    assert gadget["status"] == {"ok": True} and gadget["spec"] == {"n": 1}, gadget

    core.delete_namespaced_config_map("py-cm", "default")
    try:
        core.read_namespaced_config_map("py-cm", "default")
        raise AssertionError("deleted config map still readable")
    except client.ApiException as e:
        assert e.status == 404, e
    print("python client: all checks passed")


if __name__ == "__main__":
    main(sys.argv[1])
