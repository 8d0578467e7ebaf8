/**
 * Every metric tether exports, in one place.
 *
 * Series the Go prototype already exported keep their `cluster_proxy_*` names and labels so
 * existing dashboards and alerts keep working; new series of those components use the same
 * prefix. The engine's own series copy controller-runtime's shapes under `tether_`.
 * Counters end in `_total`, durations in `_seconds`, sizes in `_bytes`, and every label value
 * comes from a closed set (see the literal types below).
 *
 * @since 0.1.0
 */
import { Metric } from "effect"

const secondsBuckets = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30]
const connectionBuckets = [0.01, 0.1, 1, 10, 60, 300, 1800, 3600, 14400]

// ---------------------------------------------------------------------------
// managed-kubeconfig-provisioner
// ---------------------------------------------------------------------------

/** Label `result` of {@link refreshTotal}. */
export type RefreshResult = "success" | "skipped" | "error"

/** One increment per reconcile of the managed kubeconfig. Labels: `result`. */
export const refreshTotal = Metric.counter("cluster_proxy_managed_kubeconfig_refresh_total", {
  description: "Reconciles of the generated managed kubeconfig Secret, by result (success | skipped | error).",
  incremental: true
})

/** Seconds until the current token expires; set at scrape time, so it counts down between syncs. */
export const tokenExpirationSeconds = Metric.gauge("cluster_proxy_managed_kubeconfig_token_expiration_seconds", {
  description: "Seconds until the token in the generated managed kubeconfig expires (0 when expired or absent)."
})

/** Absolute expiry of the current token, for exact alerts (`time() > x`). */
export const tokenExpirationTimestampSeconds = Metric.gauge(
  "cluster_proxy_managed_kubeconfig_token_expiration_timestamp_seconds",
  { description: "Unix time at which the token in the generated managed kubeconfig expires." }
)

/** Duration of TokenRequest calls to the managed cluster, successful or not. */
export const tokenRequestDuration = Metric.histogram("cluster_proxy_managed_kubeconfig_token_request_duration_seconds", {
  description: "Duration of TokenRequest calls against the managed cluster.",
  boundaries: secondsBuckets
})

// ---------------------------------------------------------------------------
// engine (controller-runtime shapes)
// ---------------------------------------------------------------------------

/** Label `result` of {@link reconcileTotal}. */
export type ReconcileResult = "success" | "error" | "requeue_after"

/** Reconciles per controller. Labels: `controller`, `result`. */
export const reconcileTotal = Metric.counter("tether_reconcile_total", {
  description: "Reconciles per controller, by result (success | error | requeue_after).",
  incremental: true
})

/** Failed reconciles per controller. Labels: `controller`. */
export const reconcileErrorsTotal = Metric.counter("tether_reconcile_errors_total", {
  description: "Reconciles that returned an error, per controller.",
  incremental: true
})

/** Reconcile duration per controller. Labels: `controller`. */
export const reconcileTime = Metric.histogram("tether_reconcile_time_seconds", {
  description: "Duration of one reconcile, per controller.",
  boundaries: secondsBuckets
})

/** Watch (re)connections per resource. Labels: `resource`, `result` (connected | expired | error). */
export const watchRestartsTotal = Metric.counter("tether_watch_restarts_total", {
  description: "Watch connections started, by watched resource and why the previous one ended.",
  incremental: true
})

/** Keys waiting to start in a work queue. Labels: `controller`. */
export const workqueueDepth = Metric.gauge("tether_workqueue_depth", {
  description: "Keys waiting in a controller's work queue."
})

/** (cluster, add-on) pairs this replica may reconcile now. Labels: `controller`. */
export const controllerOwnedKeys = Metric.gauge("tether_controller_owned_keys", {
  description: "Keys (managed cluster, add-on pairs) this replica of a controller owns."
})

/** Failed reconciles put back with backoff. Labels: `controller`. */
export const workqueueRetriesTotal = Metric.counter("tether_workqueue_retries_total", {
  description: "Keys re-queued with backoff after a failed reconcile, per controller.",
  incremental: true
})

// ---------------------------------------------------------------------------
// managed-apiserver-proxy (raw TCP relay)
// ---------------------------------------------------------------------------

export const relayConnectionsTotal = Metric.counter("cluster_proxy_managed_apiserver_relay_connections_total", {
  description: "TCP connections accepted by the managed apiserver relay.",
  incremental: true
})

export const relayConnectionsActive = Metric.gauge("cluster_proxy_managed_apiserver_relay_connections_active", {
  description: "TCP connections currently open through the managed apiserver relay."
})

/** Connections closed right after accept because the relay was at `--max-connections`. */
export const relayConnectionsRefusedTotal = Metric.counter("cluster_proxy_managed_apiserver_relay_connections_refused_total", {
  description: "TCP connections closed right after accept because the relay was at --max-connections.",
  incremental: true
})

export const relayDialErrorsTotal = Metric.counter("cluster_proxy_managed_apiserver_relay_dial_errors_total", {
  description: "Failed dials from the managed apiserver relay to the managed apiserver.",
  incremental: true
})

/** Bytes relayed. Labels: `direction` (upstream | downstream). */
export const relayBytesTotal = Metric.counter("cluster_proxy_managed_apiserver_relay_bytes_total", {
  description: "Bytes relayed, by direction (upstream = client to apiserver, downstream = apiserver to client).",
  incremental: true
})

export const relayDialDuration = Metric.histogram("cluster_proxy_managed_apiserver_relay_dial_duration_seconds", {
  description: "Time to connect to the managed apiserver.",
  boundaries: secondsBuckets
})

export const relayConnectionDuration = Metric.histogram(
  "cluster_proxy_managed_apiserver_relay_connection_duration_seconds",
  { description: "Lifetime of relayed TCP connections.", boundaries: connectionBuckets }
)

// ---------------------------------------------------------------------------
// both HTTP proxies (service relay and service proxy)
// ---------------------------------------------------------------------------

/**
 * What one HTTP proxy's server has open now, counted once in the shared core (`src/http/Server.ts`)
 * and read at scrape time; each proxy exports them under its own prefix
 * ({@link serviceRelayOpen}, {@link serviceProxyOpen}):
 * - `<prefix>_requests_active`: plain requests from their head until the answer is finished
 *   or the client went away (refused, failed and timed-out ones included);
 * - `<prefix>_connections_active`: client TCP connections open (idle keep-alive, TLS handshakes
 *   and upgraded ones included);
 * - `<prefix>_upgrades_active`: `Upgrade` requests (WebSocket, SPDY) from their head until the
 *   client socket closes, splice included.
 *
 * A stopped server's gauges stay registered (reading 0) until the next server of that proxy
 * replaces them.
 */
export interface OpenGauges {
  readonly requests: Metric.Gauge<number>
  readonly connections: Metric.Gauge<number>
  readonly upgrades: Metric.Gauge<number>
}

const openGauges = (prefix: string, proxy: string): OpenGauges => ({
  requests: Metric.gauge(`${prefix}_requests_active`, {
    description: `Plain HTTP requests the ${proxy} is handling now (until the answer is finished or the client went away).`
  }),
  connections: Metric.gauge(`${prefix}_connections_active`, {
    description: `Client connections open to the ${proxy} now (idle keep-alive and upgraded ones included).`
  }),
  upgrades: Metric.gauge(`${prefix}_upgrades_active`, {
    description: `Upgrade requests (WebSocket, SPDY) open through the ${proxy} now, until the client socket closes.`
  })
})

// ---------------------------------------------------------------------------
// service-relay (HTTP relay on the managed cluster)
// ---------------------------------------------------------------------------

/** Label `scheme` of {@link serviceRelayRequestsTotal}. */
export type RelayScheme = "http" | "https" | "unknown" | "unsupported"

/** Requests through the service relay. Labels: `scheme`, `result` (success | error). */
export const serviceRelayRequestsTotal = Metric.counter("cluster_proxy_service_relay_requests_total", {
  description: "Requests handled by the service relay, by target scheme and result.",
  incremental: true
})

export const serviceRelayRequestDuration = Metric.histogram("cluster_proxy_service_relay_request_duration_seconds", {
  description: "Duration of requests through the service relay (until response headers).",
  boundaries: secondsBuckets
})

/** Requests, client connections and upgrades open in the service relay now. */
export const serviceRelayOpen = openGauges("cluster_proxy_service_relay", "service relay")

// ---------------------------------------------------------------------------
// service-proxy
// ---------------------------------------------------------------------------

/** Requests through the service proxy. Labels: `mode` (Direct | Disabled | BestEffort | Relay), `target`, `result`. */
export const serviceProxyRequestsTotal = Metric.counter("cluster_proxy_service_proxy_requests_total", {
  description: "Requests handled by the service proxy, by hosted mode, target kind and result.",
  incremental: true
})

export const serviceProxyRequestDuration = Metric.histogram("cluster_proxy_service_proxy_request_duration_seconds", {
  description: "Duration of requests through the service proxy (until response headers).",
  boundaries: secondsBuckets
})

/** Requests, client connections and upgrades open in the service proxy now. */
export const serviceProxyOpen = openGauges("cluster_proxy_service_proxy", "service proxy")

// ---------------------------------------------------------------------------
// addon-agent (add-on health Lease) and leader election
// ---------------------------------------------------------------------------

/** Label `result` of {@link addonLeaseUpdatesTotal}. */
export type AddonLeaseResult = "renewed" | "unhealthy" | "error"

/**
 * One increment per update period of the add-on Lease. Labels: `result` (renewed = renewTime
 * written; unhealthy = a health check failed, so not written; error = the write failed).
 */
export const addonLeaseUpdatesTotal = Metric.counter("cluster_proxy_addon_lease_updates_total", {
  description: "Update periods of the add-on health Lease, by result (renewed | unhealthy | error).",
  incremental: true
})

/** The renewTime last written, for alerts that fire before OCM's grace period ends. */
export const addonLeaseRenewTimestampSeconds = Metric.gauge("cluster_proxy_addon_lease_renew_timestamp_seconds", {
  description: "Unix time of the add-on health Lease's last successful renewal."
})

/** Per health check: 1 when it passed at the last update, 0 when it failed. Labels: `check`. */
export const addonHealthCheckStatus = Metric.gauge("cluster_proxy_addon_health_check_status", {
  description: "Result of each add-on health check at the last Lease update (1 = pass, 0 = fail), by check."
})

/** 1 while this process leads, else 0. Labels: `lease` (namespace/name). */
export const leaderElectionIsLeader = Metric.gauge("tether_leader_election_is_leader", {
  description: "Whether this process holds the leader election Lease (1) or not (0), by Lease."
})

/** Label `change` of {@link leaderElectionTransitionsTotal}. */
export type LeadershipChange = "acquired" | "lost" | "released"

/** Changes of this process's leadership. Labels: `lease`, `change` (acquired | lost | released). */
export const leaderElectionTransitionsTotal = Metric.counter("tether_leader_election_transitions_total", {
  description: "Leadership changes of this process, by Lease and change (acquired | lost | released).",
  incremental: true
})

// ---------------------------------------------------------------------------
// hosted-agent (several components in one supervised process)
// ---------------------------------------------------------------------------

/** Restarts of a supervised component after it failed. Labels: `component`. */
export const componentRestartsTotal = Metric.counter("tether_component_restarts_total", {
  description: "Restarts of a component of a multi-component process (hosted-agent) after it failed, per component.",
  incremental: true
})

/** 1 while a supervised component runs, 0 while it is starting or waiting to restart. Labels: `component`. */
export const componentUp = Metric.gauge("tether_component_up", {
  description: "1 while a component of a multi-component process (hosted-agent) runs, 0 while it starts or waits to restart."
})
