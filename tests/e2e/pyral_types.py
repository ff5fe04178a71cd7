"""End-to-end: pyral, unchanged, creating the types test tooling touches besides results —
attachments on a result and on a test case (pyral's addAttachment), a task on a
story, a discussion post, an iteration and a release — and a numeric Build coming back as text.

Environment: E2E_SERVER (host:port, HTTPS), E2E_AUTH ("apikey" or "basic"), E2E_DIR (a scratch
directory for the attached file). REQUESTS_CA_BUNDLE names the CA to trust. Prints one JSON line
with what it checked; exits non-zero on the first failure.
"""
import json
import os
import sys

import pyral
from pyral import Rally

server = os.environ["E2E_SERVER"]
auth = os.environ.get("E2E_AUTH", "apikey")
scratch = os.environ["E2E_DIR"]
checks = []
# Runs of several pyral versions share one simulator: names carry the version.
tag = f"{auth}-{pyral.__version__}"


def check(cond, what):
    if not cond:
        print(json.dumps({"failed": what, "checks": checks}))
        sys.exit(1)
    checks.append(what)


creds = {"apikey": "_sim_alice_key"} if auth == "apikey" else {"user": "carol@example.com", "password": "carol-pass"}
# Start-up reads the schema service; create and update validate attribute names against it.
rally = Rally(server, workspace="Sim Workspace", project="Sim Project", **creds)

tc = rally.get("TestCase", fetch=True, query="FormattedID = TC4", instance=True)
check(tc.FormattedID == "TC4", "query a test case")

result = rally.put("TestCaseResult", {
    "TestCase": tc.ref, "Build": 7, "Date": "2026-03-02T08:00:00.000Z", "Verdict": "Fail",
})
check(result.Build == "7", f"a numeric Build comes back as text ({result.Build!r})")

log = os.path.join(scratch, f"run-{tag}.log")
with open(log, "wb") as f:
    f.write(b"step 3 failed: expected 200, got 503\n")
name = os.path.basename(log)
attached = rally.addAttachment(result, log, mime_type="text/plain")
check(attached and attached.Name == name, "attach a log to a result")
# pyral reads an object's Attachments once; look at fresh copies, as pyral's own live tests do.
fresh = rally.get("TestCaseResult", fetch=True, query=f"ObjectID = {result.oid}", instance=True)
check([a.Name for a in fresh.Attachments] == [name], "the result lists its attachment")

on_case = rally.addAttachment(tc, log, mime_type="text/plain")
check(on_case and on_case.Name == name, "attach a file to a test case")
tc = rally.get("TestCase", fetch="FormattedID,Attachments", query="FormattedID = TC4", instance=True)
check(name in [a.Name for a in tc.Attachments], "the test case lists its attachment")

story = rally.create("HierarchicalRequirement", {"Name": f"e2e story {tag}"})
task = rally.create("Task", {"Name": "investigate", "WorkProduct": story.ref})
check(task.FormattedID.startswith("TA"), f"a task gets a TA id ({task.FormattedID})")
check(task.State == "Defined", "a new task is Defined")

post = rally.create("ConversationPost", {"Artifact": tc.ref, "Text": "flaky since build 7"})
check(post.PostNumber >= 1, "a discussion post is numbered")

iteration = rally.create("Iteration", {"Name": f"Sprint {tag}", "StartDate": "2026-03-02", "EndDate": "2026-03-13"})
check(iteration.State == "Planning", "an iteration starts in Planning")
found = rally.get("Iteration", fetch="Name,StartDate", query=f'Name = "Sprint {tag}"', instance=True)
check(found.Name == f"Sprint {tag}", "query the iteration back")
release = rally.create("Release", {"Name": f"R {tag}", "ReleaseStartDate": "2026-03-01", "ReleaseDate": "2026-06-30"})
check(release.State == "Planning", "a release starts in Planning")

print(json.dumps({"ok": True, "checks": checks}))
