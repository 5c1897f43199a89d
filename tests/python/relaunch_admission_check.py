"""relaunch's schema and admission policies through the Python kubernetes client (run by
tests/python_client.rs against a test API server with relaunch's CRDs and
manifests/base/admission-policy.yaml installed).

Usage: relaunch_admission_check.py KUBECONFIG. Exits non-zero with a message on the first failure.
"""

import json
import sys

from kubernetes import client, config

GROUP, VERSION, NS = "relaunch.dev", "v1alpha1", "default"


def request(name: str, container: dict) -> dict:
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "ContainerRecreateRequest",
            "metadata": {"name": name}, "spec": {"podName": "db-0", "containers": [container]}}


def refused(call, status: int) -> dict:
    """Runs call, expecting `status`; the Status body."""
    try:
        call()
    except client.ApiException as e:
        assert e.status == status, (e.status, e.body)
        return json.loads(e.body)
    raise AssertionError("the call was allowed")


def main(kubeconfig: str) -> None:
    config.load_kube_config(config_file=kubeconfig)
    core = client.CoreV1Api()
    rbac = client.RbacAuthorizationV1Api()
    core.create_namespaced_service_account(NS, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name="restarter")))
    rbac.create_namespaced_role(NS, {
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": "restarter"},
        "rules": [{"apiGroups": [GROUP], "resources": ["containerrecreaterequests"], "verbs": ["create"]}]})
    rbac.create_namespaced_role_binding(NS, {
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": "restarter"},
        "subjects": [{"kind": "ServiceAccount", "name": "restarter", "namespace": NS}],
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "restarter"}})
    token = core.create_namespaced_service_account_token(
        "restarter", NS, client.AuthenticationV1TokenRequest(spec=client.V1TokenRequestSpec(audiences=[]))).status.token
    bot_config = client.Configuration.get_default_copy()
    bot_config.api_key = {"authorization": "Bearer " + token}
    bot = client.CustomObjectsApi(client.ApiClient(bot_config))
    admin = client.CustomObjectsApi()

    def create(api, body):
        return api.create_namespaced_custom_object(GROUP, VERSION, NS, "containerrecreaterequests", body)

    exec_request = request("exec", {"name": "db", "shutdown": {"exec": {"command": ["db", "stop"]}}})
    status = refused(lambda: create(bot, exec_request), 403)
    assert status["reason"] == "Forbidden", status
    assert ("denied request: system:serviceaccount:default:restarter may not create pods/exec on pod default/db-0"
            in status["message"]), status
    listed = admin.list_namespaced_custom_object(GROUP, VERSION, NS, "containerrecreaterequests")
    assert listed["items"] == [], listed
    create(bot, request("plain", {"name": "db"}))

    rbac.create_namespaced_role(NS, {
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": "exec"},
        "rules": [{"apiGroups": [""], "resources": ["pods/exec"], "verbs": ["create"], "resourceNames": ["db-0"]}]})
    rbac.create_namespaced_role_binding(NS, {
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": "restarter-exec"},
        "subjects": [{"kind": "ServiceAccount", "name": "restarter", "namespace": NS}],
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "exec"}})
    create(bot, exec_request)
    # pods/exec on db-0 only: another pod's exec request is still refused.
    other = request("other", {"name": "db", "shutdown": {"exec": {"command": ["db", "stop"]}}})
    other["spec"]["podName"] = "db-1"
    refused(lambda: create(bot, other), 403)

    # The schema: a field path per problem.
    invalid = request("invalid", {"name": "db", "shutdown": {"httpGet": {"port": 80, "host": "10.0.0.1"}}})
    invalid["spec"]["activeDeadlineSeconds"] = 0
    status = refused(lambda: create(admin, invalid), 422)
    fields = sorted(c["field"] for c in status["details"]["causes"])
    assert fields == ["spec.activeDeadlineSeconds", "spec.containers[0].shutdown.httpGet.host"], status

    # A request's spec cannot be edited.
    status = refused(lambda: admin.patch_namespaced_custom_object(
        GROUP, VERSION, NS, "containerrecreaterequests", "plain", {"spec": {"podName": "db-1"}}), 422)
    assert "cannot be changed once it is created" in status["message"], status
    print("relaunch admission: all checks passed")


if __name__ == "__main__":
    main(sys.argv[1])
