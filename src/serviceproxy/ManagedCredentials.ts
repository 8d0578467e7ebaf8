/**
 * The service proxy's way into the cluster whose kube-apiserver it fronts: the apiserver URL,
 * the TLS settings for it, and the current bearer token, kept in step with the files they come
 * from.
 *
 * In hosted mode they come from the generated managed kubeconfig (`--managed-kubeconfig`, a
 * mounted Secret): an inline `token` or a `tokenFile`, `certificate-authority-data` or a
 * `certificate-authority` file, `tls-server-name`, `insecure-skip-tls-verify`. Otherwise they
 * come from the pod (`KUBERNETES_SERVICE_HOST`/`_PORT` and the ServiceAccount token and CA).
 *
 * The provisioner rotates the token by rewriting the Secret; the kubelet swaps the files. The
 * folders are watched and re-read on every change and periodically, and every consumer asks
 * for the current values on each use: the impersonating proxy, the relay hop and the
 * TokenReview client ({@link ManagedCredentials} `client`, whose bearer token is read per
 * request and which is rebuilt when the server or its TLS settings change). So a rotation
 * needs no restart and no client is left with a stale token (the Go prototype's TokenReview
 * client kept its startup token).
 *
 * The first read happens while the layer is built and must succeed. A later read that fails
 * keeps the last good values and logs a warning. Nothing read from the files is logged except
 * the server address and a short hash of the token.
 *
 * @since 0.1.0
 */
import { Context, Duration, Effect, FileSystem, Layer, Redacted, Ref, Result, Schema, Stream } from "effect"
import { createHash } from "node:crypto"
import * as Net from "node:net"
import * as Kubeconfig from "../domain/Kubeconfig.ts"
import * as ApiserverUrl from "../domain/ApiserverUrl.ts"
import * as ClientNodeKube from "../kube/ClientNodeKube.ts"
import * as Connection from "../kube/Connection.ts"
import type * as KubeClient from "../kube/KubeClient.ts"
import * as FileWatch from "../kube/FileWatch.ts"
import { GeneratedKubeconfig } from "../kube/GeneratedKubeconfig.ts"

/**
 * TLS settings for connections to the apiserver.
 *
 * @category models
 */
export interface Tls {
  /** PEM of the CAs to trust; undefined means the system roots. */
  readonly ca: string | undefined
  /** Name to verify the certificate against instead of the URL host (`tls-server-name`). */
  readonly servername: string | undefined
  /** `insecure-skip-tls-verify`: no verification at all. */
  readonly insecure: boolean
}

/**
 * What the files said at one moment.
 *
 * @category models
 */
export interface Snapshot {
  readonly server: ApiserverUrl.ApiserverUrl
  /** `<scheme>://<authority><prefix>`, without any user info. */
  readonly serverUrl: string
  readonly tls: Tls
  readonly token: Redacted.Redacted<string>
  /** Changes when the server or its TLS settings change (not with the token). */
  readonly endpointKey: string
  /** A short hash of the token, for logs. */
  readonly tokenId: string
  /** The files this snapshot was read from (their folders are watched). */
  readonly files: ReadonlyArray<string>
}

/**
 * The credentials cannot be read. At startup this stops the proxy; later it keeps the last
 * good snapshot.
 *
 * @category errors
 */
export class CredentialsError extends Schema.TaggedError<CredentialsError>()("CredentialsError", {
  message: Schema.String
}) {}

/**
 * Where the credentials come from.
 *
 * @category models
 */
export type Source =
  | { readonly _tag: "Kubeconfig"; readonly path: string }
  | {
    readonly _tag: "InCluster"
    /** Default `/var/run/secrets/kubernetes.io/serviceaccount/token`. */
    readonly tokenPath?: string
    /** Default `/var/run/secrets/kubernetes.io/serviceaccount/ca.crt`. */
    readonly caPath?: string
    /** Default: the process environment. */
    readonly env?: Readonly<Record<string, string | undefined>>
  }

/** @category models */
export interface Options {
  readonly source: Source
  /** Fail-safe re-read period (file events trigger a re-read sooner); default 10 seconds. */
  readonly reloadInterval?: Duration.Input
  /** Cluster name for the client's errors and logs; default `managed`. */
  readonly cluster?: string
  readonly userAgent?: string
}

/** @category services */
export class ManagedCredentials extends Context.Service<ManagedCredentials, {
  /** Where the credentials come from, for logs. */
  readonly description: string
  /** The last good snapshot. */
  readonly current: Effect.Effect<Snapshot>
  /** {@link current} outside an Effect, for a request path that has no fiber. */
  readonly currentUnsafe: () => Snapshot
  /** The current bearer token, for clients that take a token source. */
  readonly tokenSource: KubeClient.TokenSource
  /** Re-read the files now; a failure is logged and keeps the last good snapshot. */
  readonly reload: Effect.Effect<void>
  /**
   * A client for the apiserver that always uses the current token and, after the server or its
   * TLS settings change, the new ones.
   */
  readonly client: KubeClient.KubeClient
}>()("tether/serviceproxy/ManagedCredentials") {
  /** Read and watch `options.source`; needs a `FileSystem`. Fails when the first read fails. */
  static readonly layer = (options: Options) => Layer.effect(ManagedCredentials, make(options))

  /** Follow the provisioner in the same process ({@link GeneratedKubeconfig}); waits for its first kubeconfig. */
  static readonly layerGenerated = (options: Pick<Options, "cluster" | "userAgent"> = {}) =>
    Layer.effect(ManagedCredentials, makeGenerated(options))
}

// ---------------------------------------------------------------------------------------------
// reading
// ---------------------------------------------------------------------------------------------

const serviceAccountFolder = "/var/run/secrets/kubernetes.io/serviceaccount"

const describeSource = (source: Source): string =>
  source._tag === "Kubeconfig" ? `managed kubeconfig ${source.path}` : "in-cluster service account"

const fingerprint = (text: string): string => createHash("sha256").update(text).digest("hex")

const snapshot = (input: {
  readonly server: ApiserverUrl.ApiserverUrl
  readonly tls: Tls
  readonly token: string
  readonly files: ReadonlyArray<string>
}): Snapshot => {
  const { server, tls } = input
  return {
    server,
    serverUrl: `${server.scheme}://${server.authority}${server.pathPrefix}`,
    tls,
    token: Redacted.make(input.token),
    endpointKey: fingerprint(JSON.stringify([server, tls.ca ?? null, tls.servername ?? null, tls.insecure])),
    tokenId: fingerprint(input.token).slice(0, 12),
    files: input.files
  }
}

const readText = (path: string, what: string) =>
  Effect.gen(function*() {
    const fs = yield* FileSystem.FileSystem
    return yield* fs.readFileString(path).pipe(
      Effect.mapError((error) => new CredentialsError({ message: `cannot read the ${what} ${path}: ${error.message}` }))
    )
  })

/**
 * Read a managed kubeconfig ({@link Kubeconfig}): the selected cluster's server and TLS settings
 * and the selected user's bearer token (inline or from `tokenFile`). Relative file references
 * are resolved against the kubeconfig's folder ({@link Kubeconfig.resolveReference}).
 *
 * @category reading
 */
export const readKubeconfig = Effect.fn("ManagedCredentials.readKubeconfig")(function*(path: string) {
  const text = yield* readText(path, "managed kubeconfig")
  return yield* parseKubeconfig(text, `managed kubeconfig ${path}`, (file, what) => {
    const resolved = Kubeconfig.resolveReference(path, file)
    return Effect.map(readText(resolved, what), (content) => ({ path: resolved, content }))
  }, [path])
})

/**
 * The same from a kubeconfig handed over in memory (the provisioner in the same process); it
 * must be self-contained, as the generated one is.
 *
 * @category reading
 */
export const fromGenerated = (kubeconfig: Redacted.Redacted<string>) =>
  parseKubeconfig(Redacted.value(kubeconfig), "generated managed kubeconfig", (file, what) =>
    Effect.fail(new CredentialsError({ message: `generated managed kubeconfig: refers to a ${what} (${file}); it must be self-contained` })), [])

const parseKubeconfig = Effect.fnUntraced(function*<R>(
  text: string,
  where: string,
  readFile: (file: string, what: string) => Effect.Effect<{ readonly path: string; readonly content: string }, CredentialsError, R>,
  files: Array<string>
) {
  const fail = (why: string) => new CredentialsError({ message: `${where}: ${why}` })
  const cluster = yield* Effect.fromResult(Kubeconfig.parseCluster(text)).pipe(
    Effect.mapError((error) => fail(error.reason._tag === "Malformed" ? `not a valid kubeconfig (${error.reason.detail})` : error.message))
  )
  const server = yield* Effect.fromResult(ApiserverUrl.parseApiserverUrl(cluster.server)).pipe(
    Effect.mapError((error) => fail(error.message))
  )
  let ca: string | undefined
  if (cluster.certificateAuthorityData !== undefined) {
    ca = Buffer.from(cluster.certificateAuthorityData, "base64").toString("utf8")
  } else if (cluster.caFile !== undefined) {
    const read = yield* readFile(cluster.caFile, "managed apiserver CA file")
    files.push(read.path)
    ca = read.content
  }
  const bearer = yield* Effect.fromResult(Kubeconfig.readBearerToken(text)).pipe(
    Effect.mapError((error) =>
      fail(error.reason._tag === "NoCredentials" ? "managed kubeconfig does not contain a bearer token" : error.message)
    )
  )
  let token: string
  if (bearer._tag === "Inline") {
    token = Redacted.value(bearer.token).trim()
  } else {
    // The file wins; the inline token beside it serves while the file cannot be read (client-go).
    const read = yield* Effect.result(readFile(bearer.path, "managed token file"))
    if (read._tag === "Success") {
      files.push(read.success.path)
      token = read.success.content.trim()
    } else if (bearer.inline !== undefined) {
      token = Redacted.value(bearer.inline).trim()
    } else {
      return yield* read.failure
    }
  }
  if (token === "") return yield* fail("managed kubeconfig token is empty")
  return snapshot({
    server,
    tls: { ca, servername: cluster.tlsServerName, insecure: cluster.insecureSkipTlsVerify === true },
    token,
    files
  })
})

/**
 * Read the pod's own credentials: `https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT`,
 * the ServiceAccount CA and token.
 *
 * @category reading
 */
export const readInCluster = Effect.fn("ManagedCredentials.readInCluster")(function*(
  source: Extract<Source, { readonly _tag: "InCluster" }>
) {
  const env = source.env ?? process.env
  const host = env["KUBERNETES_SERVICE_HOST"]?.trim() ?? ""
  const port = env["KUBERNETES_SERVICE_PORT"]?.trim() ?? ""
  if (host === "" || port === "") {
    return yield* new CredentialsError({
      message: "not running in a cluster (KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT are not set); " +
        "pass --managed-kubeconfig"
    })
  }
  const server = yield* Effect.fromResult(
    ApiserverUrl.parseApiserverUrl(`https://${Net.isIPv6(host) ? `[${host}]` : host}:${port}`)
  ).pipe(Effect.mapError((error) => new CredentialsError({ message: `in-cluster apiserver address: ${error.message}` })))
  const caPath = source.caPath ?? `${serviceAccountFolder}/ca.crt`
  const tokenPath = source.tokenPath ?? `${serviceAccountFolder}/token`
  const ca = yield* readText(caPath, "service account CA")
  const token = (yield* readText(tokenPath, "service account token")).trim()
  if (token === "") return yield* new CredentialsError({ message: `the service account token ${tokenPath} is empty` })
  return snapshot({ server, tls: { ca, servername: undefined, insecure: false }, token, files: [caPath, tokenPath] })
})

/**
 * Read `source` once.
 *
 * @category reading
 */
export const read = (source: Source): Effect.Effect<Snapshot, CredentialsError, FileSystem.FileSystem> =>
  source._tag === "Kubeconfig" ? readKubeconfig(source.path) : readInCluster(source)

// ---------------------------------------------------------------------------------------------
// the service
// ---------------------------------------------------------------------------------------------

/** A connection without credentials: the token comes from the token source. */
const connectionFor = (current: Snapshot): Connection.Connection =>
  Connection.fromEntry({
    server: current.serverUrl,
    insecureSkipTlsVerify: current.tls.insecure,
    ...(current.tls.ca === undefined ? {} : { certificateAuthorityData: Buffer.from(current.tls.ca, "utf8").toString("base64") }),
    ...(current.tls.servername === undefined ? {} : { tlsServerName: current.tls.servername })
  })

/**
 * Read `options.source`, watch its files, and serve the current snapshot. Needs a
 * `FileSystem` and a `Scope` (the watch runs until it closes).
 *
 * @category constructors
 */
export const make = Effect.fnUntraced(function*(options: Options) {
  const fs = yield* FileSystem.FileSystem
  const description = describeSource(options.source)
  const readNow = read(options.source).pipe(Effect.provideService(FileSystem.FileSystem, fs))
  const current = yield* Ref.make(yield* readNow)
  const reload = Effect.flatMap(Effect.result(readNow), (next) => update(current, description, next))
  yield* FileWatch.start({
    paths: (yield* Ref.get(current)).files,
    interval: options.reloadInterval ?? Duration.seconds(10),
    reload,
    what: description
  }).pipe(Effect.provideService(FileSystem.FileSystem, fs))
  return yield* serve(current, description, options, reload)
})

/**
 * The credentials of the kubeconfig the provisioner in the same process hands over
 * ({@link GeneratedKubeconfig}): waits for the first one, then follows every rotation at once.
 * Needs a `Scope`.
 *
 * @category constructors
 */
export const makeGenerated = Effect.fnUntraced(function*(options: Pick<Options, "cluster" | "userAgent"> = {}) {
  const generated = yield* GeneratedKubeconfig
  const description = "generated managed kubeconfig (in process)"
  const current = yield* Ref.make(yield* Effect.flatMap(generated.latest, fromGenerated))
  yield* generated.changes.pipe(
    Stream.runForEach((kubeconfig) => Effect.flatMap(Effect.result(fromGenerated(kubeconfig)), (next) => update(current, description, next))),
    Effect.forkScoped
  )
  return yield* serve(current, description, options, Effect.void)
})

/** Keep `next` when it was read; log what changed, or why the last good snapshot stays. */
const update = (current: Ref.Ref<Snapshot>, description: string, next: Result.Result<Snapshot, CredentialsError>) =>
  Effect.gen(function*() {
    if (Result.isFailure(next)) {
      return yield* Effect.logWarning("cannot reload the apiserver credentials; keeping the last good ones", {
        source: description,
        error: next.failure.message
      })
    }
    const previous = yield* Ref.getAndSet(current, next.success)
    if (previous.endpointKey !== next.success.endpointKey) {
      yield* Effect.logInfo("apiserver endpoint changed", { source: description, from: previous.serverUrl, to: next.success.serverUrl })
    }
    if (previous.tokenId !== next.success.tokenId) {
      yield* Effect.logInfo("apiserver token reloaded", { source: description, token: next.success.tokenId })
    }
  }).pipe(Effect.annotateLogs({ component: "service-proxy" }))

/** The service over a snapshot kept current by someone else. */
const serve = Effect.fnUntraced(function*(
  current: Ref.Ref<Snapshot>,
  description: string,
  options: Pick<Options, "cluster" | "userAgent">,
  reload: Effect.Effect<void>
) {
  const cluster = options.cluster ?? "managed"
  const first = yield* Ref.get(current)
  yield* Effect.logInfo("apiserver credentials loaded", { source: description, server: first.serverUrl, token: first.tokenId })

  const tokenSource: KubeClient.TokenSource = () => Promise.resolve(Ref.getUnsafe(current).token)

  let built: { readonly key: string; readonly client: KubeClient.KubeClient } | undefined
  const currentClient = (): KubeClient.KubeClient => {
    const now = Ref.getUnsafe(current)
    if (built === undefined || built.key !== now.endpointKey) {
      built = {
        key: now.endpointKey,
        client: ClientNodeKube.make({
          cluster,
          connection: connectionFor(now),
          tokenSource,
          userAgent: options.userAgent ?? "tether-service-proxy"
        })
      }
    }
    return built.client
  }
  // Every method is looked up on the client of the current endpoint when it is called, so the
  // delegation follows KubeClient as it grows.
  const client = new Proxy({} as KubeClient.KubeClient, {
    get: (_target, property) => {
      if (property === "cluster") return cluster
      const value = (currentClient() as unknown as Record<PropertyKey, unknown>)[property]
      if (typeof value !== "function") return value
      return (...args: ReadonlyArray<unknown>) =>
        ((currentClient() as unknown as Record<PropertyKey, (...a: ReadonlyArray<unknown>) => unknown>)[property])!(...args)
    }
  })

  return ManagedCredentials.of({
    description,
    current: Ref.get(current),
    currentUnsafe: () => Ref.getUnsafe(current),
    tokenSource,
    reload,
    client
  })
})
