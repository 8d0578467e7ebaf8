/**
 * The {@link KubeClient.KubeClient} over HTTP: JSON requests and watch streams on undici's
 * request API, one {@link Connection.Connection} per cluster for its address, TLS settings and
 * credentials. Objects are the apiserver's JSON as is (typed with client-node's models): a field
 * client-node types as a `Date` (timestamps, MicroTime) holds the RFC 3339 string.
 *
 * On top of the connection this module adds:
 * - errors become {@link KubeError.KubeError} with a reason and a safe message (only the
 *   apiserver's Status message; no response body leaks);
 * - one dispatcher per client, so connections are reused;
 * - an optional {@link KubeClient.TokenSource} consulted on every request, so a rotated token
 *   needs no new client.
 *
 * @since 0.1.0
 */
import type {
  AuthenticationV1TokenRequest,
  CoreV1Event,
  V1Lease,
  V1Secret,
  V1ServiceAccount,
  V1TokenReview
} from "@kubernetes/client-node"
import { type Context, Effect, Layer, Redacted } from "effect"
import { STATUS_CODES } from "node:http"
import { type Dispatcher, request as undiciRequest } from "undici"
import * as Connection from "./Connection.ts"
import * as KubeClient from "./KubeClient.ts"
import * as KubeError from "./KubeError.ts"
import * as KubeWatch from "./Watch.ts"

/** How to reach one cluster. @category models */
export interface Options {
  /** Name used in logs and errors: hosting, managed, hub. */
  readonly cluster: string
  readonly connection: Connection.Connection
  /**
   * Overrides the kubeconfig user's bearer token on every request. (An apiserver prefers a client
   * certificate when one is configured, so use it with token-based kubeconfigs.)
   */
  readonly tokenSource?: KubeClient.TokenSource
  /** Sent as User-Agent. */
  readonly userAgent?: string
  /**
   * Bound on one request other than a watch, in milliseconds: a request the server (or the path to
   * it) never finishes fails with a `Transport` error instead of holding its reconcile for ever.
   * Default {@link defaultRequestTimeoutMs}.
   */
  readonly requestTimeoutMs?: number
}

/**
 * An answer outside 2xx. It keeps the status, Retry-After and the apiserver's Status message,
 * never the body itself.
 */
class StatusError {
  readonly status: number
  readonly retryAfterSeconds: number | undefined
  readonly detail: string
  constructor(status: number, retryAfterSeconds: number | undefined, detail: string) {
    this.status = status
    this.retryAfterSeconds = retryAfterSeconds
    this.detail = detail
  }
}

/** A 2xx answer that is not JSON (a proxy's page, a truncated body): no part of it is kept. */
class NotJson extends Error {
  constructor() {
    super("the server's answer is not JSON")
  }
}

const statusMessage = (body: string): string => {
  try {
    const parsed = JSON.parse(body) as { message?: unknown }
    if (typeof parsed.message === "string") return parsed.message
  } catch {
    // not a Status object
  }
  return "no details from the server"
}

const retryAfter = (raw: string | null): number | undefined => {
  const seconds = raw === null ? Number.NaN : Number(raw)
  return Number.isFinite(seconds) && seconds >= 0 ? seconds : undefined
}

/** Turn anything a request throws into a {@link KubeError.KubeError}. @category errors */
export const toKubeError = (cluster: string, operation: string) => (error: unknown): KubeError.KubeError => {
  if (error instanceof StatusError) {
    return new KubeError.KubeError({
      cluster,
      operation,
      reason: KubeError.reasonFromStatus(error.status),
      status: error.status,
      ...(error.retryAfterSeconds === undefined ? {} : { retryAfterSeconds: error.retryAfterSeconds }),
      detail: error.detail
    })
  }
  // Transport failures carry node's code (ECONNREFUSED, ...) and a message without credentials.
  const cause = error instanceof Error ? ((error as { cause?: unknown }).cause ?? error) : error
  const code = (cause as { code?: unknown } | undefined)?.code
  const message = cause instanceof Error ? cause.message : String(cause)
  return new KubeError.KubeError({
    cluster,
    operation,
    reason: "Transport",
    detail: typeof code === "string" ? `${code}: ${message}` : message
  })
}

/**
 * The connection's one dispatcher, built on first use. `dropConnections` destroys it (the next
 * request builds a new one): all requests share its connections, and one that went silent would
 * otherwise carry every later list and watch into the same hole.
 */
const makeDispatcher = (connection: Connection.Connection) => {
  let current: Promise<Dispatcher> | undefined
  const take = () => {
    const old = current
    current = undefined
    return old?.catch(() => undefined)
  }
  return {
    get: (): Promise<Dispatcher> => {
      if (current !== undefined) return current
      const building = connection.dispatcher()
      current = building
      // A failed build (an unreadable file) is not kept: the next request tries again.
      building.catch(() => {
        if (current === building) current = undefined
      })
      return building
    },
    dropConnections: async () => {
      await (await take())?.destroy().catch(() => undefined)
    },
    /** Unlike `dropConnections`, lets the requests in flight finish; does not wait for them. */
    closeConnections: () => {
      void take()?.then((old) => old?.close()).catch(() => undefined)
    }
  }
}

type Method = "GET" | "POST" | "PUT" | "DELETE"

/**
 * The kube-apiserver ends a request that is not long-running after its own `--request-timeout`
 * (one minute by default); a little longer here, so its answer, not ours, says what happened.
 *
 * @category constructors
 */
export const defaultRequestTimeoutMs = 70_000

/** A list as the apiserver answers it. */
interface List<A> {
  readonly items: ReadonlyArray<A>
  readonly metadata?: { readonly resourceVersion?: string }
}

const segment = encodeURIComponent

/** Query parameters; undefined ones are left out. */
type Query = { readonly [name: string]: string | undefined }

/** The header's value, when the server sent it once. */
const header = (headers: Record<string, string | Array<string> | undefined>, name: string): string | null => {
  const value = headers[name]
  return typeof value === "string" ? value : null
}

/**
 * Build a client for one cluster.
 *
 * @category constructors
 */
export const make = (options: Options): KubeClient.KubeClient => {
  const { cluster, connection, tokenSource } = options
  const dispatcher = makeDispatcher(connection)
  const userAgent = options.userAgent ?? "tether"
  const requestTimeoutMs = options.requestTimeoutMs ?? defaultRequestTimeoutMs

  /** Open one request with the kubeconfig's credentials and TLS settings; `body` goes as JSON. */
  const open = async (
    method: Method,
    path: string,
    request: { readonly query?: Query; readonly body?: unknown; readonly signal?: AbortSignal; readonly bounded?: boolean }
  ) => {
    const search = new URLSearchParams()
    for (const [name, value] of Object.entries(request.query ?? {})) {
      if (value !== undefined) search.set(name, value)
    }
    const query = search.size === 0 ? "" : `?${search}`
    const headers: Record<string, string> = { accept: "application/json", "user-agent": userAgent }
    const body = request.body === undefined ? undefined : JSON.stringify(request.body)
    if (body !== undefined) headers["content-type"] = "application/json"
    await connection.authenticate(headers)
    if (tokenSource !== undefined) headers["authorization"] = `Bearer ${Redacted.value(await tokenSource())}`
    return undiciRequest(connection.server + path + query, {
      method,
      headers,
      dispatcher: await dispatcher.get(),
      ...(body === undefined ? {} : { body }),
      ...(request.signal === undefined ? {} : { signal: request.signal }),
      ...(request.bounded === true ? { headersTimeout: requestTimeoutMs, bodyTimeout: requestTimeoutMs } : {})
    })
  }

  /** One request, its 2xx answer parsed as JSON (typed by the caller). */
  const send = async (
    method: Method,
    path: string,
    request: { readonly query?: Query; readonly body?: unknown },
    signal: AbortSignal
  ): Promise<unknown> => {
    const response = await open(method, path, { ...request, signal, bounded: true })
    const text = await response.body.text()
    if (response.statusCode < 200 || response.statusCode > 299) {
      throw new StatusError(response.statusCode, retryAfter(header(response.headers, "retry-after")), statusMessage(text))
    }
    try {
      return JSON.parse(text) as unknown
    } catch {
      throw new NotJson()
    }
  }

  // An interrupted call (a timeout or a shutdown around it) aborts its request.
  const call = <A>(operation: string, method: Method, path: string, request: Parameters<typeof send>[2] = {}) =>
    Effect.tryPromise({ try: (signal) => send(method, path, request, signal) as Promise<A>, catch: toKubeError(cluster, operation) })

  const watchTransport = <A extends { metadata?: { resourceVersion?: string } }>(
    description: string,
    path: string,
    query: KubeClient.WatchOptions
  ): KubeWatch.Transport<A> => ({
    list: call<List<A>>(`list ${description}`, "GET", path, { query: { ...query } }).pipe(
      Effect.map((result) => ({ items: result.items, resourceVersion: result.metadata?.resourceVersion ?? "" }))
    ),
    describe: { cluster, operation: `watch ${description}` },
    dropConnections: Effect.promise(() => dispatcher.dropConnections()),
    // One watch request: a stream of JSON lines, `{type, object}` each. The server ends it after
    // timeoutSeconds (the stream's heartbeat, see Watch.ts), whose deadline also bounds it here.
    watch: (resourceVersion, emit, timeoutSeconds) =>
      Effect.callback<KubeWatch.WatchEnd, KubeError.KubeError>((resume) => {
        const abort = new AbortController()
        let lastVersion = resourceVersion
        let expired = false
        let settled = false
        const end = (outcome: Effect.Effect<KubeWatch.WatchEnd, KubeError.KubeError>) => {
          if (settled) return
          settled = true
          abort.abort()
          resume(outcome)
        }
        const failed = (error: unknown) =>
          end(expired ? Effect.succeed({ _tag: "Expired" }) : Effect.fail(toKubeError(cluster, `watch ${description}`)(error)))
        const line = (text: string) => {
          let event: { type?: unknown; object?: A & { code?: number } }
          try {
            event = JSON.parse(text) as typeof event
          } catch {
            return // not a JSON line: skipped, as client-node's watch did
          }
          const object = event.object
          if (object === undefined || object === null) return
          if (event.type === "ERROR") {
            if (object.code === 410) expired = true
            return
          }
          const version = object.metadata?.resourceVersion
          if (version !== undefined) lastVersion = version
          if (event.type === "BOOKMARK") return
          emit({ _tag: event.type === "ADDED" ? "Added" : event.type === "DELETED" ? "Deleted" : "Modified", object })
        }
        open("GET", path, {
          query: {
            ...query,
            watch: "true",
            resourceVersion,
            allowWatchBookmarks: "true",
            timeoutSeconds: String(timeoutSeconds)
          },
          signal: abort.signal
        }).then((response) => {
          const body = response.body
          body.on("error", failed)
          if (response.statusCode !== 200) {
            // As client-node's watch reported it: the status text, a transport failure.
            body.resume()
            failed(new Error(STATUS_CODES[response.statusCode] ?? "Internal Server Error"))
            return
          }
          let pending = ""
          body.setEncoding("utf8")
          body.on("data", (chunk: string) => {
            pending += chunk
            for (let newline = pending.indexOf("\n"); newline >= 0; newline = pending.indexOf("\n")) {
              line(pending.slice(0, newline))
              pending = pending.slice(newline + 1)
            }
          })
          body.on("end", () => {
            if (pending !== "") line(pending)
            end(Effect.succeed(expired ? { _tag: "Expired" } : { _tag: "Closed", resourceVersion: lastVersion }))
          })
        }, failed)
        return Effect.sync(() => {
          settled = true
          abort.abort()
        })
      })
  })

  const secrets = (namespace: string) => `/api/v1/namespaces/${segment(namespace)}/secrets`
  const leases = (namespace: string) => `/apis/coordination.k8s.io/v1/namespaces/${segment(namespace)}/leases`
  const customGroup = (resource: KubeClient.CustomResource) => `/apis/${segment(resource.group)}/${segment(resource.version)}`
  const customObjects = (resource: KubeClient.CustomResource, namespace: string) =>
    `${customGroup(resource)}/namespaces/${segment(namespace)}/${segment(resource.plural)}`

  return {
    cluster,
    server: connection.server,
    closeConnections: Effect.sync(() => dispatcher.closeConnections()),

    getSecret: (namespace, name) => call<V1Secret>(`get secret ${namespace}/${name}`, "GET", `${secrets(namespace)}/${segment(name)}`),
    createSecret: (namespace, secret) =>
      call<V1Secret>(`create secret ${namespace}/${secret.metadata?.name}`, "POST", secrets(namespace), { body: secret }),
    replaceSecret: (namespace, secret) =>
      call<V1Secret>(
        `update secret ${namespace}/${secret.metadata?.name}`,
        "PUT",
        `${secrets(namespace)}/${segment(secret.metadata?.name ?? "")}`,
        { body: secret }
      ),
    deleteSecret: (namespace, name, expect) =>
      Effect.asVoid(call(
        `delete secret ${namespace}/${name}`,
        "DELETE",
        `${secrets(namespace)}/${segment(name)}`,
        expect === undefined ? {} : { body: { preconditions: { uid: expect.uid } } }
      )),
    watchSecrets: (namespace, options = {}) =>
      KubeWatch.stream(watchTransport<V1Secret>(`secrets in ${namespace}`, secrets(namespace), options)),
    watchAllSecrets: (options = {}) =>
      KubeWatch.stream(watchTransport<V1Secret>("secrets in all namespaces", "/api/v1/secrets", options)),

    createEvent: (namespace, event) =>
      call<CoreV1Event>(`create event in ${namespace}`, "POST", `/api/v1/namespaces/${segment(namespace)}/events`, { body: event }),

    createServiceAccountToken: (namespace, name, request) =>
      call<AuthenticationV1TokenRequest>(
        `create token for serviceaccount ${namespace}/${name}`,
        "POST",
        `/api/v1/namespaces/${segment(namespace)}/serviceaccounts/${segment(name)}/token`,
        { body: request }
      ),
    getServiceAccount: (namespace, name) =>
      call<V1ServiceAccount>(
        `get serviceaccount ${namespace}/${name}`,
        "GET",
        `/api/v1/namespaces/${segment(namespace)}/serviceaccounts/${segment(name)}`
      ),
    createTokenReview: (review) =>
      call<V1TokenReview>("create tokenreview", "POST", "/apis/authentication.k8s.io/v1/tokenreviews", { body: review }),

    getCustomObject: (resource, namespace, name) =>
      call<KubeClient.CustomObject>(
        `get ${resource.plural} ${namespace}/${name}`,
        "GET",
        `${customObjects(resource, namespace)}/${segment(name)}`
      ),
    replaceCustomObjectStatus: (resource, object) => {
      const namespace = object.metadata?.namespace ?? ""
      const name = object.metadata?.name ?? ""
      return call<KubeClient.CustomObject>(
        `update status of ${resource.plural} ${namespace}/${name}`,
        "PUT",
        `${customObjects(resource, namespace)}/${segment(name)}/status`,
        { body: object }
      )
    },
    watchCustomObjects: (resource, namespace, options = {}) =>
      KubeWatch.stream(watchTransport<KubeClient.CustomObject>(
        `${resource.plural} in ${namespace}`,
        customObjects(resource, namespace),
        options
      )),
    watchAllCustomObjects: (resource, options = {}) =>
      KubeWatch.stream(watchTransport<KubeClient.CustomObject>(
        `${resource.plural} in all namespaces`,
        `${customGroup(resource)}/${segment(resource.plural)}`,
        options
      )),

    getLease: (namespace, name) => call<V1Lease>(`get lease ${namespace}/${name}`, "GET", `${leases(namespace)}/${segment(name)}`),
    createLease: (namespace, lease) =>
      call<V1Lease>(`create lease ${namespace}/${lease.metadata?.name}`, "POST", leases(namespace), { body: lease }),
    replaceLease: (namespace, lease) =>
      call<V1Lease>(
        `update lease ${namespace}/${lease.metadata?.name}`,
        "PUT",
        `${leases(namespace)}/${segment(lease.metadata?.name ?? "")}`,
        { body: lease }
      ),
    deleteLease: (namespace, name) =>
      Effect.asVoid(call(`delete lease ${namespace}/${name}`, "DELETE", `${leases(namespace)}/${segment(name)}`)),
    listLeases: (namespace, labelSelector) =>
      call<List<V1Lease>>(`list leases in ${namespace}`, "GET", leases(namespace), { query: { labelSelector } }).pipe(
        Effect.map((list) => list.items)
      )
  }
}

/**
 * A layer providing `tag` from a kubeconfig file (or in-cluster when `path` is undefined).
 *
 * @category layers
 */
export const layer = <I>(
  tag: Context.Key<I, KubeClient.KubeClient>,
  options: { readonly cluster: string; readonly path: string | undefined; readonly userAgent?: string }
) =>
  Layer.effect(
    tag,
    Effect.map(Connection.load(options.cluster, options.path), (connection) =>
      make({ cluster: options.cluster, connection, ...(options.userAgent ? { userAgent: options.userAgent } : {}) }))
  )
