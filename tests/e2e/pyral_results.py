"""End-to-end: pyral, unchanged, writing and reading TestCaseResults.

Environment: E2E_SERVER (host:port, HTTPS), E2E_AUTH ("apikey" or "basic"), E2E_BULK (how many
results with Build "bulk" the server holds, for the paging check). REQUESTS_CA_BUNDLE names the
CA to trust. Prints one JSON line with what it checked; exits non-zero on the first failure.
"""
import json
import os
import sys

from pyral import Rally, RallyRESTAPIError

server = os.environ["E2E_SERVER"]
auth = os.environ.get("E2E_AUTH", "apikey")
bulk = int(os.environ.get("E2E_BULK", "0"))
# Through the sidecar (with no build configured) a missing Build is refused by the sidecar
# before Rally sees it; directly, Rally's validation refuses it.
via = os.environ.get("E2E_VIA", "simulator")
missing_build = "TestCaseResult.Build is missing" if via == "sidecar" else "Build should not be null"
checks = []


def check(cond, what):
    if not cond:
        print(json.dumps({"failed": what, "checks": checks}))
        sys.exit(1)
    checks.append(what)


creds = {"apikey": "_sim_alice_key"} if auth == "apikey" else {"user": "carol@example.com", "password": "carol-pass"}
# The constructor runs pyral's whole start-up sequence: user, subscription, profile,
# workspaces, projects and the schema service.
rally = Rally(server, workspace="Sim Workspace", project="Sim Project", **creds)
check(rally.getWorkspace().Name == "Sim Workspace", "start-up: workspace")
check(rally.getProject().Name == "Sim Project", "start-up: project")

tc = rally.get("TestCase", fetch="FormattedID,Name,ObjectID", query="FormattedID = TC3", instance=True)
check(tc.FormattedID == "TC3", "query a test case by FormattedID")

build = "e2e-pyral-" + auth
created = rally.put("TestCaseResult", {
    "TestCase": tc.ref, "Build": build, "Date": "2026-03-01T12:00:00.000Z", "Verdict": "Pass", "Notes": "from pyral",
})
check(created.oid > 0, "create returns an ObjectID")
check(created.Build == build and created.Verdict == "Pass", "create's follow-up read returns the result")

read = rally.get("TestCaseResult", fetch="Build,Verdict,TestCase,Date", query=f"ObjectID = {created.oid}", instance=True)
check(read.Build == build, "read back by query")
check(read.TestCase.FormattedID == "TC3" if hasattr(read.TestCase, "FormattedID") else True, "nested test case")

updated = rally.post("TestCaseResult", {"ObjectID": created.oid, "Verdict": "Fail"})
check(updated.Verdict == "Fail", "update by POST")

if bulk:
    seen = rally.get("TestCaseResult", fetch="Build,Verdict", query='Build = "bulk"', pagesize=1000)
    check(seen.resultCount == bulk, f"query total {seen.resultCount} == {bulk}")
    n = sum(1 for _ in seen)
    check(n == bulk, f"paging over {bulk} results yields every one ({n})")

try:
    rally.put("TestCaseResult", {"TestCase": tc.ref, "Date": "2026-03-01T12:00:00.000Z", "Verdict": "Pass"})
    check(False, "a result without Build must raise")
except RallyRESTAPIError as e:
    check(missing_build in str(e), f"the missing-Build error surfaces as RallyRESTAPIError ({e})")

try:
    rally.put("TestCaseResult", {"TestCase": tc.ref, "Build": "x", "Date": "2026-03-01T12:00:00.000Z", "Verdict": "Splendid"})
    check(False, "an invalid verdict must raise")
except RallyRESTAPIError as e:
    check("Verdict" in str(e), "invalid verdict surfaces as RallyRESTAPIError")

check(rally.delete("TestCaseResult", created.oid) is True, "delete")
gone = rally.get("TestCaseResult", fetch="Build", query=f"ObjectID = {created.oid}")
check(gone.resultCount == 0, "deleted result is gone")

print(json.dumps({"ok": True, "checks": checks}))
