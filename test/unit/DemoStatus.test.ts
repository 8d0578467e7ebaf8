/**
 * The demo's status view (src/demo/Status.ts): Prometheus text into samples, and a snapshot into
 * the lines the demo shows.
 */
import { assert, describe, it } from "@effect/vitest"
import * as Status from "../../src/demo/Status.ts"

const exposition = `# HELP cluster_proxy_service_proxy_requests_total Requests handled by the service proxy.
# TYPE cluster_proxy_service_proxy_requests_total counter
cluster_proxy_service_proxy_requests_total{mode="Relay",target="service",result="success"} 40
cluster_proxy_service_proxy_requests_total{mode="Relay",target="service",result="error"} 2
cluster_proxy_service_proxy_requests_total{mode="Relay",target="kube-apiserver",result="success"} 7
cluster_proxy_managed_apiserver_relay_connections_total 12
cluster_proxy_managed_apiserver_relay_connections_active 1
cluster_proxy_managed_apiserver_relay_bytes_total{direction="upstream"} 35200
cluster_proxy_managed_apiserver_relay_bytes_total{direction="downstream"} 1500000
cluster_proxy_addon_lease_updates_total{result="renewed"} 3
odd_label{msg="a \\"quoted\\" value, with a comma"} 1
not a sample line
`

describe("demo status", () => {
  it("parses samples with labels, escaped quotes and commas, skipping comments and junk", () => {
    const samples = Status.parseMetrics(exposition)
    assert.strictEqual(samples.length, 9)
    assert.deepStrictEqual(samples.at(-1), { name: "odd_label", labels: { msg: `a "quoted" value, with a comma` }, value: 1 })
    assert.strictEqual(Status.total(samples, "cluster_proxy_service_proxy_requests_total"), 49)
    assert.strictEqual(Status.total(samples, "cluster_proxy_service_proxy_requests_total", { target: "service", result: "error" }), 2)
    assert.deepStrictEqual(Status.byLabel(samples, "cluster_proxy_service_proxy_requests_total", "result"), [["success", 47], ["error", 2]])
  })

  it("formats durations and sizes", () => {
    assert.strictEqual(Status.formatDuration(-5_000), "0s")
    assert.strictEqual(Status.formatDuration(12_900), "12s")
    assert.strictEqual(Status.formatDuration(581_000), "9m41s")
    assert.strictEqual(Status.formatDuration(3_720_000), "1h02m")
    assert.strictEqual(Status.formatBytes(512), "512 B")
    assert.strictEqual(Status.formatBytes(35_200), "35.2 kB")
    assert.strictEqual(Status.formatBytes(1_500_000), "1.5 MB")
  })

  it("renders one line per component from a snapshot", () => {
    const issuedAt = Date.parse("2026-12-05T13:10:04Z")
    const lines = Status.render({
      now: issuedAt + 19_000,
      token: { issuedAt, expiresAt: issuedAt + 600_000 },
      rotations: [{ at: issuedAt, why: "source changed" }],
      condition: { status: "True", reason: "ManagedKubeconfigUpdated", since: "2026-12-05T13:09:53Z" },
      leaseRenewedAt: issuedAt + 17_000,
      agent: Status.parseMetrics(exposition),
      relay: Status.parseMetrics(`cluster_proxy_service_relay_requests_total{scheme="http",result="success"} 40`),
      relayRuns: true
    })
    assert.deepStrictEqual(lines, [
      "token        expires in 9m41s (issued 13:10:04, lifetime 10m00s) · rotations 1 (last 13:10:04, source changed)",
      "hub          ManagedKubeconfigReady=True (ManagedKubeconfigUpdated) since 13:09:53",
      "lease        renewed 2s ago · updates: renewed 3",
      "tcp relay    connections 12 (open 1) · bytes up 35.2 kB, down 1.5 MB · dial errors 0",
      "svc proxy    kube-apiserver: success 7 · service: success 40, error 2",
      "svc relay    requests success 40"
    ])
  })

  it("says what is missing before anything is provisioned, and when the relay does not run", () => {
    const lines = Status.render({ now: 0, rotations: [], relayRuns: false })
    assert.deepStrictEqual(lines, [
      "token        not provisioned yet",
      "hub          not set yet",
      "lease        not created yet",
      "tcp relay    metrics unavailable",
      "svc proxy    metrics unavailable",
      "svc relay    not running (no network namespace)"
    ])
  })
})
