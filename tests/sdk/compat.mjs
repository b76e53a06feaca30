// Drives meter with the official OpenMeter JavaScript SDK (@openmeter/sdk), unchanged but for the
// base URL and key. The SDK stamps `time` with the current instant on every call, so a retry of
// an event (same id) carries a new time: meter must take it for a duplicate, as OpenMeter does.
//
// Usage: node compat.mjs URL KEY TENANT RUN_ID. Prints one JSON line with what each call returned.
import { OpenMeter } from '@openmeter/sdk'

const [url, key, tenant, run] = process.argv.slice(2)
const om = new OpenMeter({ baseUrl: url, apiKey: key })
const event = () => ({
  id: `${run}-npm-1`,
  type: 'api.call',
  subject: tenant,
  source: 'npm-sdk',
  data: { route: '/npm', method: 'GET', status: 200 },
})
const out = {}
const first = event()
await om.events.ingest(first)
await new Promise((resolve) => setTimeout(resolve, 20))
const retry = event()
await om.events.ingest(retry)
out.resend = 'ok'
try {
  await om.events.ingest({ ...event(), data: { route: '/other', method: 'GET', status: 200 } })
  out.conflict = 'accepted'
} catch (e) {
  out.conflict = { status: e.status, detail: String(e.message).slice(0, 300) }
}
console.log(JSON.stringify(out))
