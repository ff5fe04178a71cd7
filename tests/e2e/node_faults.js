// End-to-end through the sidecar to a simulator that drops and conflicts: the Node toolkit
// writes E2E_COUNT results; prints which it was told are stored and which failed.
const rally = require('rally');

async function main() {
  const auth = process.env.E2E_AUTH || 'apikey';
  const api = rally({
    server: process.env.E2E_SERVER,
    ...(auth === 'apikey' ? {apiKey: '_sim_alice_key'} : {user: 'carol@example.com', pass: 'carol-pass'}),
  });
  const confirmed = [];
  const failed = [];
  const n = Number(process.env.E2E_COUNT || 20);
  for (let i = 0; i < n; i++) {
    const build = `e2e-faults-node-${auth}-${i}`;
    try {
      const r = await api.create({type: 'testcaseresult', fetch: ['Build'],
        data: {TestCase: '/testcase/1041', Verdict: 'Pass', Build: build, Date: '2026-04-04T04:04:04.000Z'}});
      if (r.Errors.length === 0) confirmed.push(build);
    } catch (e) {
      failed.push([build, e.message]);
    }
  }
  console.log(JSON.stringify({ok: true, checks: ['wrote every result'], confirmed, failed}));
}

main().catch((e) => {
  console.log(JSON.stringify({failed: String(e && e.message || e), checks: []}));
  process.exit(1);
});
