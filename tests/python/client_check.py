"""The Python kubernetes client against the test API server (run by tests/python_client.rs).

Usage: client_check.py KUBECONFIG. Exits non-zero with a message on the first failure.
"""

import json
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

    check_rbac(core)
    check_admission(custom, ext)

    core.delete_namespaced_config_map("py-cm", "default")
    try:
        core.read_namespaced_config_map("py-cm", "default")
        raise AssertionError("deleted config map still readable")
    except client.ApiException as e:
        assert e.status == 404, e
    print("python client: all checks passed")


def forbidden(call) -> str:
    """Runs call, expecting a 403; the Status message."""
    try:
        call()
    except client.ApiException as e:
        assert e.status == 403, (e.status, e.body)
        return json.loads(e.body)["message"]
    raise AssertionError("the call was allowed")


def check_rbac(core: client.CoreV1Api) -> None:
    """A service account gets what its Role grants, nothing else; reviews and impersonation."""
    rbac = client.RbacAuthorizationV1Api()
    core.create_namespaced_service_account("default", client.V1ServiceAccount(metadata=client.V1ObjectMeta(name="py-bot")))
    rbac.create_namespaced_role("default", {
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": "py-reader"},
        "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list"]}]})
    rbac.create_namespaced_role_binding("default", {
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": "py-reader"},
        "subjects": [{"kind": "ServiceAccount", "name": "py-bot", "namespace": "default"}],
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "py-reader"}})
    request = client.AuthenticationV1TokenRequest(spec=client.V1TokenRequestSpec(audiences=[]))
    token = core.create_namespaced_service_account_token("py-bot", "default", request).status.token

    bot_config = client.Configuration.get_default_copy()
    bot_config.api_key = {"authorization": "Bearer " + token}
    bot_api = client.ApiClient(bot_config)
    bot = client.CoreV1Api(bot_api)
    # kube-root-ca.crt: the root-CA publisher's ConfigMap, in every namespace as on a cluster.
    names = [c.metadata.name for c in bot.list_namespaced_config_map("default").items]
    assert [n for n in names if n != "kube-root-ca.crt"] == ["py-cm"], names
    body = client.V1ConfigMap(metadata=client.V1ObjectMeta(name="py-bot-cm"))
    message = forbidden(lambda: bot.create_namespaced_config_map("default", body))
    assert message == ('configmaps is forbidden: User "system:serviceaccount:default:py-bot" cannot create '
                       'resource "configmaps" in API group "" in the namespace "default"'), message

    who = client.AuthenticationV1Api(bot_api).create_self_subject_review({"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"})
    assert who.status.user_info.username == "system:serviceaccount:default:py-bot", who
    self_review = client.AuthorizationV1Api(bot_api).create_self_subject_access_review({
        "apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
        "spec": {"resourceAttributes": {"namespace": "default", "verb": "create", "resource": "configmaps"}}})
    assert self_review.status.allowed is False, self_review
    review = client.AuthorizationV1Api().create_subject_access_review({
        "apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
        "spec": {"user": "system:serviceaccount:default:py-bot", "groups": ["system:serviceaccounts"],
                 "resourceAttributes": {"namespace": "default", "verb": "list", "resource": "configmaps"}}})
    assert review.status.allowed is True and "py-reader" in review.status.reason, review
    rules = client.AuthorizationV1Api(bot_api).create_self_subject_rules_review({
        "apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectRulesReview", "spec": {"namespace": "default"}})
    assert any(r.resources == ["configmaps"] and r.verbs == ["get", "list"] for r in rules.status.resource_rules), rules

    bot_api.set_default_header("Impersonate-User", "jane")
    message = forbidden(lambda: bot.list_namespaced_config_map("default"))
    assert message == ('users "jane" is forbidden: User "system:serviceaccount:default:py-bot" cannot impersonate '
                       'resource "users" in API group "" at the cluster scope'), message


GADGET_POLICY = {
    "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicy",
    "metadata": {"name": "small-gadgets"},
    "spec": {"failurePolicy": "Fail",
             "matchConstraints": {"resourceRules": [{"apiGroups": ["example.dev"], "apiVersions": ["*"],
                                                     "operations": ["CREATE", "UPDATE"], "resources": ["gadgets"]}]},
             "validations": [{"expression": "!has(object.spec.n) || object.spec.n <= 10",
                              "messageExpression": "'n is ' + string(object.spec.n) + ', at most 10'"}]},
}


def check_admission(custom: client.CustomObjectsApi, ext: client.ApiextensionsV1Api) -> None:
    """A ValidatingAdmissionPolicy refuses with its message; a CRD's schema refuses with causes."""
    admission = client.AdmissionregistrationV1Api()
    admission.create_validating_admission_policy(GADGET_POLICY)
    admission.create_validating_admission_policy_binding({
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicyBinding",
        "metadata": {"name": "small-gadgets"}, "spec": {"policyName": "small-gadgets", "validationActions": ["Deny"]}})
    big = {"apiVersion": "example.dev/v1", "kind": "Gadget", "metadata": {"name": "big"}, "spec": {"n": 11}}
    try:
        custom.create_namespaced_custom_object("example.dev", "v1", "default", "gadgets", big)
        raise AssertionError("the policy let a big gadget in")
    except client.ApiException as e:
        assert e.status == 422, (e.status, e.body)
        assert json.loads(e.body)["message"] == (
            'gadgets.example.dev "big" is forbidden: ValidatingAdmissionPolicy \'small-gadgets\' with binding '
            '\'small-gadgets\' denied request: n is 11, at most 10'), e.body

    ext.create_custom_resource_definition({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "sprockets.example.dev"},
        "spec": {"group": "example.dev", "scope": "Namespaced",
                 "names": {"plural": "sprockets", "singular": "sprocket", "kind": "Sprocket"},
                 "versions": [{"name": "v1", "served": True, "storage": True, "schema": {"openAPIV3Schema": {
                     "type": "object", "properties": {"spec": {"type": "object", "properties": {
                         "teeth": {"type": "integer", "minimum": 3}}}}}}}]}})
    bad = {"apiVersion": "example.dev/v1", "kind": "Sprocket", "metadata": {"name": "s"}, "spec": {"teeth": 1}}
    try:
        custom.create_namespaced_custom_object("example.dev", "v1", "default", "sprockets", bad)
        raise AssertionError("a sprocket with one tooth was accepted")
    except client.ApiException as e:
        assert e.status == 422, (e.status, e.body)
        causes = json.loads(e.body)["details"]["causes"]
        assert causes == [{"reason": "FieldValueInvalid", "field": "spec.teeth",
                           "message": "Invalid value: 1: spec.teeth in body should be greater than or equal to 3"}], causes


if __name__ == "__main__":
    main(sys.argv[1])
