// End-to-end through the sidecar: the Node toolkit writes results with no Build, Date or
// Tester and the stored results carry them; a write to the archived TC90 is rejected with the
// sidecar's message. Environment: E2E_SERVER, E2E_AUTH, E2E_BUILD, E2E_TESTER.
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
  const api = rally({
    server: process.env.E2E_SERVER,
    ...(auth === 'apikey' ? {apiKey: '_sim_alice_key'} : {user: 'carol@example.com', pass: 'carol-pass'}),
  });
  const before = Date.now();
  const created = await api.create({
    type: 'testcaseresult',
    data: {TestCase: '/testcase/1007', Verdict: 'Pass'},
    fetch: ['Build', 'Date', 'Tester'],
  });
  check(created.Errors.length === 0, 'created without Build, Date or Tester');
  const got = await api.get({ref: created.Object._ref, fetch: ['Build', 'Date', 'Tester']});
  check(got.Object.Build === process.env.E2E_BUILD, `Build filled from the build context (${got.Object.Build})`);
  check(Math.abs(Date.parse(got.Object.Date) - before) < 300000, `Date filled with the time of the request (${got.Object.Date})`);
  check(got.Object.Tester && got.Object.Tester._ref.endsWith(process.env.E2E_TESTER), `Tester is the credential's owner (${got.Object.Tester && got.Object.Tester._ref})`);

  let rejected = null;
  try {
    await api.create({type: 'testcaseresult', data: {TestCase: '/testcase/1090', Verdict: 'Pass', Build: 'b'}});
  } catch (e) {
    rejected = e;
  }
  check(rejected && rejected.message.includes('TestCase TC90 is archived (c_Lifecycle = Archived); result not written'),
    `the guard's message rejects the promise (${rejected && rejected.message})`);
  console.log(JSON.stringify({ok: true, checks}));
}

main().catch((e) => {
  console.log(JSON.stringify({failed: String(e && e.message || e), checks}));
  process.exit(1);
});
