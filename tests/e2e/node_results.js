// End-to-end: the Node toolkit (npm "rally"), unchanged, writing and reading TestCaseResults.
// Environment: E2E_SERVER (full origin), E2E_AUTH ("apikey" or "basic"). NODE_EXTRA_CA_CERTS
// names the CA to trust. Prints one JSON line; exits non-zero on the first failure.
const rally = require('rally');

const checks = [];
function check(cond, what) {
  if (!cond) {
    console.log(JSON.stringify({failed: what, checks}));
    process.exit(1);
  }
  checks.push(what);
}

async function main() {
  const auth = process.env.E2E_AUTH || 'apikey';
  const opts = auth === 'apikey'
    ? {apiKey: '_sim_alice_key'}
    : {user: 'carol@example.com', pass: 'carol-pass'};
  const api = rally({server: process.env.E2E_SERVER, ...opts});
  const build = `e2e-node-${auth}`;

  const created = await api.create({
    type: 'testcaseresult',
    data: {TestCase: '/testcase/1004', Build: build, Date: '2026-03-02T08:00:00.000Z', Verdict: 'Pass'},
    fetch: ['ObjectID', 'Build', 'Verdict'],
  });
  check(created.Errors.length === 0, 'create has no Errors');
  check(created.Object.Build === build, 'create returns the fetched fields');
  const ref = created.Object._ref;
  check(ref.startsWith(process.env.E2E_SERVER), `refs point back at the server we used (${ref})`);

  const updated = await api.update({ref, data: {Verdict: 'Fail'}, fetch: ['Verdict']});
  check(updated.Object.Verdict === 'Fail', 'update by PUT');

  const got = await api.get({ref, fetch: ['Build', 'Verdict']});
  check(got.Object.Verdict === 'Fail', 'read back');

  const q = await api.query({
    type: 'testcaseresult', fetch: ['Build'], query: `(Build = "${build}")`, limit: Infinity,
  });
  check(q.TotalResultCount === 1 && q.Results.length === 1, 'query finds exactly the one result');

  let rejected = null;
  try {
    await api.create({type: 'testcaseresult', data: {TestCase: '/testcase/1004', Date: '2026-03-02T08:00:00.000Z', Verdict: 'Pass'}});
  } catch (e) {
    rejected = e;
  }
  const missingBuild = process.env.E2E_VIA === 'sidecar' ? /TestCaseResult\.Build is missing/ : /Build should not be null/;
  check(rejected && missingBuild.test(rejected.message), `the missing-Build error rejects the promise (${rejected && rejected.message})`);

  await api.del({ref});
  let missing = null;
  try {
    await api.get({ref});
  } catch (e) {
    missing = e;
  }
  check(missing && /Cannot find object to read/.test(missing.message), 'deleted result is gone');

  console.log(JSON.stringify({ok: true, checks}));
}

main().catch((e) => {
  console.log(JSON.stringify({failed: String(e && e.message || e), checks}));
  process.exit(1);
});
