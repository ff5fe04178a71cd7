"""Structural checks of deploy/kubernetes beyond the schemas: the native sidecar, its probes,
the Secret, the shared CA, the Job's shutdown call, the CronJob's sweep. Prints the ConfigMap's
config.toml to the path given as the second argument so the sidecar can parse it too."""
import glob
import json
import sys

import yaml

docs = {}
for path in sorted(glob.glob(sys.argv[1] + "/*.yaml")):
    for d in yaml.safe_load_all(open(path)):
        docs[d["kind"]] = d
checks = []


def check(cond, what):
    if not cond:
        print(json.dumps({"failed": what, "checks": checks}))
        sys.exit(1)
    checks.append(what)


dep = docs["Deployment"]["spec"]["template"]["spec"]
side = [c for c in dep["initContainers"] if c["name"] == "rally-sidecar"][0]
check(side.get("restartPolicy") == "Always", "native sidecar: an init container with restartPolicy Always")
check(side["readinessProbe"]["httpGet"]["port"] == "admin" and side["livenessProbe"]["httpGet"]["path"] == "/healthz", "probes on the admin port")
check(any(p["name"] == "admin" and p["containerPort"] == 9464 for p in side["ports"]), "admin port declared")
check(side["envFrom"][0]["secretRef"]["name"] == "rally-api-key", "API key from a Secret")
check(any(v.get("configMap", {}).get("name") == "rally-sidecar-config" for v in dep["volumes"]), "config from a ConfigMap")
check(any(c["name"] == "tls-init" and c["args"][0] == "cert" for c in dep["initContainers"]), "TLS made at start by rally-sidecar cert")
tests = dep["containers"][0]
check({"name": "REQUESTS_CA_BUNDLE", "value": "/tls/ca.pem"} in tests["env"], "the runner trusts the shared CA")
check(any("persistentVolumeClaim" in v for v in dep["volumes"]), "journal on a volume")
job = docs["Job"]["spec"]["template"]["spec"]
shutdown_call = [" ".join(c.get("args", [])) for c in job["containers"] if "/shutdown" in " ".join(c.get("args", []))]
check(len(shutdown_call) == 1 and "-X POST" in shutdown_call[0] and "http://localhost:9464/shutdown" in shutdown_call[0], "the Job's test container asks the sidecar to shut down")
check("Authorization: Bearer $(cat /etc/rally-sidecar-admin/token)" in shutdown_call[0] and "Content-Type: application/json" in shutdown_call[0], "the shutdown call carries the admin token")
check(not any(p["containerPort"] == 8443 for p in side["ports"]), "the Rally listener is not exposed")
check(any(v.get("secret", {}).get("secretName") == "rally-sidecar-admin" for v in dep["volumes"]), "the admin token from a Secret")
pol = docs["NetworkPolicy"]["spec"]
check(pol["policyTypes"] == ["Ingress"] and [p["port"] for r in pol["ingress"] for p in r["ports"]] == [9464], "a NetworkPolicy lets in the admin port only")
check(any(e.get("name") == "RALLY_SIDECAR_ADMIN_ENABLE_SHUTDOWN" and e.get("value") == "true" for c in job["containers"] for e in c.get("env", [])), "shutdown enabled in the Job")
cron = docs["CronJob"]["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
check(cron["args"][:2] == ["sweep", "--once"], "the CronJob runs sweep --once")
open(sys.argv[2], "w").write(docs["ConfigMap"]["data"]["config.toml"])
print(json.dumps({"ok": True, "checks": checks}))
