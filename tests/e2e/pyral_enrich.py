"""End-to-end through the sidecar: pyral writes results with no Build, Date or Tester and the
stored results carry them; a write to the archived TC90 raises the sidecar's message.

Environment: E2E_SERVER, E2E_AUTH, E2E_BUILD (the build the sidecar's context holds),
E2E_TESTER (the user ref the caller's credential belongs to).
"""
import json
import os
import sys
from datetime import datetime, timezone

from pyral import Rally, RallyRESTAPIError

checks = []


def check(cond, what):
    if not cond:
        print(json.dumps({"failed": what, "checks": checks}))
        sys.exit(1)
    checks.append(what)


auth = os.environ.get("E2E_AUTH", "apikey")
creds = {"apikey": "_sim_alice_key"} if auth == "apikey" else {"user": "carol@example.com", "password": "carol-pass"}
rally = Rally(os.environ["E2E_SERVER"], workspace="Sim Workspace", project="Sim Project", **creds)
build = os.environ["E2E_BUILD"]
tester = os.environ["E2E_TESTER"]

before = datetime.now(timezone.utc).replace(microsecond=0)
tcr = rally.put("TestCaseResult", {"TestCase": "testcase/1006", "Verdict": "Pass", "Notes": f"no build, date, tester ({auth})"})
check(tcr.oid > 0, "created without Build, Date or Tester")
stored = rally.get("TestCaseResult", fetch="Build,Date,Tester,Verdict", query=f"ObjectID = {tcr.oid}", instance=True)
check(stored.Build == build, f"Build filled from the build context ({stored.Build})")
date = datetime.fromisoformat(stored.Date.replace("Z", "+00:00"))
check(abs((date - before).total_seconds()) < 300, f"Date filled with the time of the request ({stored.Date})")
check(stored.Tester is not None and stored.Tester.ref.endswith(tester.lstrip("/")), f"Tester is the credential's owner ({stored.Tester and stored.Tester.ref})")

kept = rally.put("TestCaseResult", {"TestCase": "testcase/1006", "Verdict": "Fail", "Build": "mine", "Date": "2026-02-02T02:02:02.000Z"})
check(kept.Build == "mine", "a Build sent by the client is kept")

try:
    rally.put("TestCaseResult", {"TestCase": "testcase/1090", "Verdict": "Pass", "Build": "b"})
    check(False, "a write to the archived TC90 must raise")
except RallyRESTAPIError as e:
    check("TestCase TC90 is archived (c_Lifecycle = Archived); result not written" in str(e), f"the guard's message surfaces as RallyRESTAPIError ({e})")

print(json.dumps({"ok": True, "checks": checks}))
