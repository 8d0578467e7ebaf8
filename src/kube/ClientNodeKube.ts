/**
 * The {@link KubeClient.KubeClient} backed by `@kubernetes/client-node`.
 *
 * This is the only module that touches client-node's generated APIs. It adds three things the
 * library does not do on its own:
 * - errors become {@link KubeError.KubeError} with a reason and a safe message (no
 *   `ApiException` or response body leaks);
 * - one TLS dispatcher per client, so connections are reused (client-node builds a new one
 *   for every request);
 * - an optional {@link KubeClient.TokenSource} consulted on every request, so a rotated token
 *   needs no new client.
 *
 * @since 0.1.0
 */
import {
  ApiException,
  AuthenticationV1Api,
  CoordinationV1Api,
  CoreV1Api,
  createConfiguration,
  CustomObjectsApi,
  KubeConfig,
  RequestContext,
  ServerConfiguration,
  Watch,
  type SecurityAuthentication
} from "@kubernetes/client-node"
import { type Context, Effect, Layer, Redacted } from "effect"
import type * as Kubeconfig from "../domain/Kubeconfig.ts"
import * as KubeClient from "./KubeClient.ts"
import * as KubeError from "./KubeError.ts"
import * as KubeWatch from "./Watch.ts"

/** How to reach one cluster. @category models */
export interface Options {
  /** Name used in logs and errors: hosting, managed, hub. */
  readonly cluster: string
  readonly kubeConfig: KubeConfig
  /**
   * Overrides the kubeconfig user's bearer token on every request. (An apiserver prefers a client
   * certificate when one is configured, so use it with token-based kubeconfigs.)
   */
  readonly tokenSource?: KubeClient.TokenSource
  /** Sent as User-Agent. */
  readonly userAgent?: string
}

const statusMessage = (body: unknown): string => {
  const text = typeof body === "string" ? body : JSON.stringify(body ?? "")
  try {
    const parsed = JSON.parse(text) as { message?: unknown }
    if (typeof parsed.message === "string") return parsed.message
  } catch {
    // not a Status object
  }
  return "no details from the server"
}

const retryAfter = (headers: Record<string, string> | undefined): number | undefined => {
  const raw = headers?.["retry-after"] ?? headers?.["Retry-After"]
  const seconds = raw === undefined ? Number.NaN : Number(raw)
  return Number.isFinite(seconds) && seconds >= 0 ? seconds : undefined
}

/** Turn anything client-node throws into a {@link KubeError.KubeError}. @category errors */
export const toKubeError = (cluster: string, operation: string) => (error: unknown): KubeError.KubeError => {
  if (error instanceof ApiException) {
    const after = retryAfter(error.headers)
    return new KubeError.KubeError({
      cluster,
      operation,
      reason: KubeError.reasonFromStatus(error.code),
      status: error.code,
      ...(after === undefined ? {} : { retryAfterSeconds: after }),
      detail: statusMessage(error.body)
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
 * Authentication that reuses one dispatcher and takes the bearer token from `tokenSource`.
 * It also satisfies what client-node's `Watch` needs from a config. `dropConnections` destroys
 * the dispatcher (the next request opens a new one): all requests share one HTTP/2 connection,
 * and one that went silent would otherwise carry every later list and watch into the same hole.
 */
const makeAuthentication = (
  kubeConfig: KubeConfig,
  tokenSource: KubeClient.TokenSource | undefined,
  userAgent: string
) => {
  let dispatcher: ReturnType<RequestContext["getDispatcher"]> | undefined
  const auth: SecurityAuthentication & {
    getCurrentCluster: () => ReturnType<KubeConfig["getCurrentCluster"]>
    dropConnections: () => Promise<void>
  } = {
    getName: () => "tether",
    dropConnections: async () => {
      const old = dispatcher
      dispatcher = undefined
      await old?.destroy().catch(() => undefined)
    },
    getCurrentCluster: () => kubeConfig.getCurrentCluster(),
    applySecurityAuthentication: async (context: RequestContext) => {
      await kubeConfig.applySecurityAuthentication(context)
      context.setHeaderParam("User-Agent", userAgent)
      if (dispatcher === undefined) dispatcher = context.getDispatcher()
      else if (dispatcher !== undefined) context.setDispatcher(dispatcher)
      if (tokenSource !== undefined) {
        context.setHeaderParam("Authorization", `Bearer ${Redacted.value(await tokenSource())}`)
      }
    }
  }
  return auth
}

/**
 * Build a client for one cluster.
 *
 * @category constructors
 */
export const make = (options: Options): KubeClient.KubeClient => {
  const { cluster, kubeConfig } = options
  const current = kubeConfig.getCurrentCluster()
  if (current === null) throw new Error(`the ${cluster} kubeconfig has no current cluster`)
  const auth = makeAuthentication(kubeConfig, options.tokenSource, options.userAgent ?? "tether")
  const configuration = createConfiguration({
    baseServer: new ServerConfiguration(current.server, {}),
    authMethods: { default: auth }
  })
  const core = new CoreV1Api(configuration)
  const custom = new CustomObjectsApi(configuration)
  const authn = new AuthenticationV1Api(configuration)
  const coordination = new CoordinationV1Api(configuration)

  const call = <A>(operation: string, f: () => Promise<A>): Effect.Effect<A, KubeError.KubeError> =>
    Effect.tryPromise({ try: f, catch: toKubeError(cluster, operation) })

  const watchTransport = <A extends { metadata?: { resourceVersion?: string } }>(
    description: string,
    path: string,
    list: () => Promise<{ items: ReadonlyArray<A>; metadata?: { resourceVersion?: string } }>,
    query: KubeClient.WatchOptions
  ): KubeWatch.Transport<A> => ({
    list: call(`list ${description}`, list).pipe(
      Effect.map((result) => ({ items: result.items, resourceVersion: result.metadata?.resourceVersion ?? "" }))
    ),
    describe: { cluster, operation: `watch ${description}` },
    dropConnections: Effect.promise(() => auth.dropConnections()),
    watch: (resourceVersion, emit, timeoutSeconds) =>
      Effect.callback<KubeWatch.WatchEnd, KubeError.KubeError>((resume) => {
        let lastVersion = resourceVersion
        let expired = false
        const watcher = new Watch(auth as unknown as KubeConfig)
        // The server ends each watch after timeoutSeconds (the stream's heartbeat, see Watch.ts),
        // which also bounds it; this is only a backstop.
        ;(watcher as unknown as { requestTimeoutMs: number }).requestTimeoutMs = 6 * 60_000
        const pending = watcher.watch(
          path,
          {
            resourceVersion,
            allowWatchBookmarks: true,
            timeoutSeconds,
            ...query
          },
          (phase: string, object: A & { code?: number }) => {
            if (phase === "ERROR") {
              if (object.code === 410) expired = true
              return
            }
            const version = object.metadata?.resourceVersion
            if (version !== undefined) lastVersion = version
            if (phase === "BOOKMARK") return
            const tag = phase === "ADDED" ? "Added" : phase === "DELETED" ? "Deleted" : "Modified"
            emit({ _tag: tag, object })
          },
          (error: unknown) => {
            if (expired) resume(Effect.succeed({ _tag: "Expired" }))
            else if (error === null || error === undefined) {
              resume(Effect.succeed({ _tag: "Closed", resourceVersion: lastVersion }))
            } else resume(Effect.fail(toKubeError(cluster, `watch ${description}`)(error)))
          }
        )
        pending.catch((error: unknown) => resume(Effect.fail(toKubeError(cluster, `watch ${description}`)(error))))
        return Effect.promise(() => pending.then((controller) => controller.abort(), () => undefined))
      })
  })

  const customPath = (resource: KubeClient.CustomResource, namespace: string) =>
    `/apis/${resource.group}/${resource.version}/namespaces/${namespace}/${resource.plural}`

  return {
    cluster,
    server: current.server,

    getSecret: (namespace, name) =>
      call(`get secret ${namespace}/${name}`, () => core.readNamespacedSecret({ namespace, name })),
    createSecret: (namespace, secret) =>
      call(`create secret ${namespace}/${secret.metadata?.name}`, () =>
        core.createNamespacedSecret({ namespace, body: secret })),
    replaceSecret: (namespace, secret) =>
      call(`update secret ${namespace}/${secret.metadata?.name}`, () =>
        core.replaceNamespacedSecret({ namespace, name: secret.metadata?.name ?? "", body: secret })),
    deleteSecret: (namespace, name, expect) =>
      Effect.asVoid(call(`delete secret ${namespace}/${name}`, () =>
        core.deleteNamespacedSecret({
          namespace,
          name,
          ...(expect === undefined ? {} : { body: { preconditions: { uid: expect.uid } } })
        }))),
    watchSecrets: (namespace, options = {}) =>
      KubeWatch.stream(watchTransport(
        `secrets in ${namespace}`,
        `/api/v1/namespaces/${namespace}/secrets`,
        () => core.listNamespacedSecret({ namespace, ...options }),
        options
      )),

    watchAllSecrets: (options = {}) =>
      KubeWatch.stream(watchTransport(
        "secrets in all namespaces",
        "/api/v1/secrets",
        () => core.listSecretForAllNamespaces({ ...options }),
        options
      )),

    createEvent: (namespace, event) =>
      call(`create event in ${namespace}`, () => core.createNamespacedEvent({ namespace, body: event })),

    createServiceAccountToken: (namespace, name, request) =>
      call(`create token for serviceaccount ${namespace}/${name}`, () =>
        core.createNamespacedServiceAccountToken({ namespace, name, body: request })),
    getServiceAccount: (namespace, name) =>
      call(`get serviceaccount ${namespace}/${name}`, () => core.readNamespacedServiceAccount({ namespace, name })),
    createTokenReview: (review) => call("create tokenreview", () => authn.createTokenReview({ body: review })),

    getCustomObject: (resource, namespace, name) =>
      call(`get ${resource.plural} ${namespace}/${name}`, () =>
        custom.getNamespacedCustomObject({ ...resource, namespace, name }) as Promise<KubeClient.CustomObject>),
    replaceCustomObjectStatus: (resource, object) => {
      const namespace = object.metadata?.namespace ?? ""
      const name = object.metadata?.name ?? ""
      return call(`update status of ${resource.plural} ${namespace}/${name}`, () =>
        custom.replaceNamespacedCustomObjectStatus({ ...resource, namespace, name, body: object }) as Promise<
          KubeClient.CustomObject
        >)
    },
    watchCustomObjects: (resource, namespace, options = {}) =>
      KubeWatch.stream(watchTransport(
        `${resource.plural} in ${namespace}`,
        customPath(resource, namespace),
        () =>
          custom.listNamespacedCustomObject({ ...resource, namespace, ...options }) as Promise<
            { items: ReadonlyArray<KubeClient.CustomObject>; metadata?: { resourceVersion?: string } }
          >,
        options
      )),

    watchAllCustomObjects: (resource, options = {}) =>
      KubeWatch.stream(watchTransport(
        `${resource.plural} in all namespaces`,
        `/apis/${resource.group}/${resource.version}/${resource.plural}`,
        () =>
          custom.listClusterCustomObject({ ...resource, ...options }) as Promise<
            { items: ReadonlyArray<KubeClient.CustomObject>; metadata?: { resourceVersion?: string } }
          >,
        options
      )),

    getLease: (namespace, name) =>
      call(`get lease ${namespace}/${name}`, () => coordination.readNamespacedLease({ namespace, name })),
    createLease: (namespace, lease) =>
      call(`create lease ${namespace}/${lease.metadata?.name}`, () =>
        coordination.createNamespacedLease({ namespace, body: lease })),
    replaceLease: (namespace, lease) =>
      call(`update lease ${namespace}/${lease.metadata?.name}`, () =>
        coordination.replaceNamespacedLease({ namespace, name: lease.metadata?.name ?? "", body: lease })),
    deleteLease: (namespace, name) =>
      Effect.asVoid(call(`delete lease ${namespace}/${name}`, () => coordination.deleteNamespacedLease({ namespace, name }))),
    listLeases: (namespace, labelSelector) =>
      call(`list leases in ${namespace}`, () => coordination.listNamespacedLease({ namespace, labelSelector })).pipe(
        Effect.map((list) => list.items)
      )
  }
}

/**
 * A client-node configuration for one cluster read by the kubeconfig reader: its server and TLS
 * settings, and its credentials, or none when a {@link KubeClient.TokenSource} supplies the token
 * on every request. The one place such a configuration is built (the provisioner's TokenRequest
 * client, the service proxy's managed client).
 *
 * @category constructors
 */
export const kubeConfigFor = (
  cluster: Omit<Kubeconfig.ClusterEntry, "caFile">,
  credentials?: Kubeconfig.Credentials
): KubeConfig => {
  const kubeConfig = new KubeConfig()
  kubeConfig.loadFromOptions({
    clusters: [{
      name: "cluster",
      server: cluster.server,
      skipTLSVerify: cluster.insecureSkipTlsVerify ?? false,
      ...(cluster.certificateAuthorityData === undefined ? {} : { caData: cluster.certificateAuthorityData }),
      ...(cluster.tlsServerName === undefined ? {} : { tlsServerName: cluster.tlsServerName }),
      ...(cluster.proxyUrl === undefined ? {} : { proxyUrl: cluster.proxyUrl })
    }],
    users: [
      credentials === undefined
        ? { name: "user" }
        : credentials._tag === "Token"
        ? { name: "user", token: Redacted.value(credentials.token) }
        : { name: "user", certData: credentials.certData, keyData: Redacted.value(credentials.keyData) }
    ],
    contexts: [{ name: "cluster", cluster: "cluster", user: "user" }],
    currentContext: "cluster"
  })
  return kubeConfig
}

/**
 * Load a kubeconfig from a file, or the in-cluster configuration when `path` is undefined.
 * client-node re-reads the in-cluster token file itself, so rotations of the pod's own token
 * need nothing from us.
 *
 * @category constructors
 */
export const loadKubeConfig = (cluster: string, path: string | undefined): Effect.Effect<KubeConfig, KubeError.KubeError> =>
  Effect.try({
    try: () => {
      const kubeConfig = new KubeConfig()
      if (path === undefined) {
        // Outside a pod client-node would build "https://undefined:undefined" and every call
        // would fail with "Invalid URL", forever: refuse at start instead.
        if (!process.env["KUBERNETES_SERVICE_HOST"] || !process.env["KUBERNETES_SERVICE_PORT"]) {
          throw new Error("not running in a cluster (KUBERNETES_SERVICE_HOST/PORT unset): pass --kubeconfig")
        }
        kubeConfig.loadFromCluster()
      } else kubeConfig.loadFromFile(path)
      if (kubeConfig.getCurrentCluster() === null) throw new Error("it has no current cluster")
      return kubeConfig
    },
    catch: (error) =>
      new KubeError.KubeError({
        cluster,
        operation: path === undefined ? "load the in-cluster configuration" : `load kubeconfig ${path}`,
        reason: "Invalid",
        detail: error instanceof Error ? error.message.split("\n")[0] ?? "unreadable" : "unreadable"
      })
  })

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
    Effect.map(loadKubeConfig(options.cluster, options.path), (kubeConfig) =>
      make({ cluster: options.cluster, kubeConfig, ...(options.userAgent ? { userAgent: options.userAgent } : {}) }))
  )
