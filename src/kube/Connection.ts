/**
 * How tether's Kubernetes client reaches one apiserver: its URL, a dispatcher with the TLS
 * settings, and the headers that authenticate a request.
 *
 * tether applies what a kubeconfig says itself for every kind of credential a pod or an operator
 * normally hands it (read by {@link Kubeconfig.parseClient}): a CA (inline or a file), a client
 * certificate and key (inline or files), a bearer token (inline or a `tokenFile`),
 * `tls-server-name`, `insecure-skip-tls-verify` and an HTTP(S) `proxy-url`; and the pod's own
 * ServiceAccount when no kubeconfig is given. A credential plugin (`exec`, `auth-provider`),
 * impersonation, basic auth or a SOCKS proxy is left to `@kubernetes/client-node`, which is only
 * loaded for such a kubeconfig: its auth providers (OIDC, Azure, GCP, SOCKS) and
 * `node:child_process` cost several MiB in every process that loads them.
 *
 * Files are read again where they may change: a token file at most once a minute (as client-go
 * does), the TLS files whenever a new dispatcher is built (after the client drops its
 * connections).
 *
 * @since 0.1.0
 */
import { Effect, Redacted } from "effect"
import * as Fs from "node:fs/promises"
import type * as Https from "node:https"
import * as Net from "node:net"
import type * as NodeTls from "node:tls"
import { Agent, type Dispatcher, ProxyAgent } from "undici"
import * as Kubeconfig from "../domain/Kubeconfig.ts"
import * as KubeError from "./KubeError.ts"

/**
 * One apiserver as a client reaches it.
 *
 * @category models
 */
export interface Connection {
  /** The apiserver's URL as the kubeconfig gives it; request paths are appended. */
  readonly server: string
  /** A new dispatcher with the TLS settings as they are now (their files are read again). */
  readonly dispatcher: () => Promise<Dispatcher>
  /** Adds the headers that authenticate one request (`Authorization`, `Impersonate-*`). */
  readonly authenticate: (headers: Record<string, string>) => Promise<void>
}

/** TLS settings of one dispatcher. */
interface Tls {
  readonly ca?: Exclude<NodeTls.ConnectionOptions["ca"], undefined>
  readonly cert?: Exclude<NodeTls.ConnectionOptions["cert"], undefined>
  readonly key?: Exclude<NodeTls.ConnectionOptions["key"], undefined>
  readonly servername?: string
  readonly rejectUnauthorized: boolean
}

// client-go's keep-alive probe interval; undici's 60 s default can race a load balancer's idle timeout.
const keepAlive = { keepAlive: true, keepAliveInitialDelay: 30_000 } as const

/**
 * HTTP/1.1 only, as client-node's own transport: undici 8 negotiates HTTP/2 where the server
 * offers it (the kube-apiserver does), and its HTTP/2 client can still emit an error on a stream
 * or session nobody listens to (a CI run of the hosting apiserver going away ended in an uncaught
 * "socket idle timeout" from its idle-session reaper), which would take the whole agent down.
 * Over HTTP/1.1 each watch holds its own connection: a few per apiserver.
 */
const http1 = { allowH2: false } as const

/** How often a token file is read again (client-go's cachingTokenSource). */
const tokenFileRefreshMs = 60_000

const newDispatcher = (proxyUrl: string | undefined, tls: Tls): Dispatcher =>
  proxyUrl === undefined
    ? new Agent({ ...http1, connect: { ...tls, ...keepAlive } })
    : new ProxyAgent({ ...http1, uri: proxyUrl, requestTls: tls, connect: keepAlive })

/**
 * A plain `http://` server sends credentials in the clear: as client-node does, only with
 * `insecure-skip-tls-verify` set, which says the operator accepts an unprotected connection.
 */
const checkScheme = (cluster: Pick<Kubeconfig.ClusterEntry, "server" | "insecureSkipTlsVerify">): string | undefined =>
  cluster.server.startsWith("http:") && cluster.insecureSkipTlsVerify !== true
    ? `the server ${cluster.server} is plain HTTP; tether uses it only with insecure-skip-tls-verify: true`
    : undefined

const pem = (base64: string): string => Buffer.from(base64, "base64").toString("utf8")

/**
 * A connection from a cluster entry whose CA is inline and, optionally, inline credentials (the
 * provisioner's client for the managed cluster, the service proxy's); without credentials the
 * caller supplies the token per request.
 *
 * @category constructors
 */
export const fromEntry = (
  cluster: Omit<Kubeconfig.ClusterEntry, "caFile">,
  credentials?: Kubeconfig.Credentials
): Connection => {
  const refused = checkScheme(cluster)
  const tls: Tls = {
    rejectUnauthorized: cluster.insecureSkipTlsVerify !== true,
    ...(cluster.certificateAuthorityData === undefined ? {} : { ca: pem(cluster.certificateAuthorityData) }),
    ...(cluster.tlsServerName === undefined ? {} : { servername: cluster.tlsServerName }),
    ...(credentials?._tag === "ClientCertificate"
      ? { cert: pem(credentials.certData), key: pem(Redacted.value(credentials.keyData)) }
      : {})
  }
  const authorization = credentials?._tag === "Token" ? `Bearer ${Redacted.value(credentials.token).trim()}` : undefined
  return {
    server: cluster.server,
    // A refused server fails each request (a typed transport error), not the caller that built this.
    dispatcher: () =>
      refused === undefined ? Promise.resolve(newDispatcher(cluster.proxyUrl, tls)) : Promise.reject(new Error(refused)),
    authenticate: (headers) => {
      if (authorization !== undefined) headers["authorization"] = authorization
      return Promise.resolve()
    }
  }
}

/** Reads a token file at most once a minute; while it cannot be read, `inline` serves (client-go). */
const tokenFile = (path: string, inline: Redacted.Redacted<string> | undefined) => {
  let cached: { readonly token: string; readonly at: number } | undefined
  return async (): Promise<string> => {
    const now = Date.now()
    if (cached !== undefined && now - cached.at < tokenFileRefreshMs) return cached.token
    try {
      const token = (await Fs.readFile(path, "utf8")).trim()
      if (token === "") throw new Error(`the token file ${path} is empty`)
      cached = { token, at: now }
      return token
    } catch (error) {
      if (inline !== undefined) return Redacted.value(inline).trim()
      throw error
    }
  }
}

const readMaterial = async (material: Kubeconfig.Material, resolve: (path: string) => string): Promise<string> =>
  material._tag === "Data" ? pem(Redacted.value(material.base64)) : Fs.readFile(resolve(material.path), "utf8")

/** A connection that applies a kubeconfig read by {@link Kubeconfig.parseClient} itself. */
const direct = (
  cluster: Kubeconfig.ClusterEntry,
  auth: Extract<Kubeconfig.ClientAuth, { readonly _tag: "Direct" }>,
  resolve: (path: string) => string
): Connection => {
  const readTls = async (): Promise<Tls> => ({
    rejectUnauthorized: cluster.insecureSkipTlsVerify !== true,
    ...(cluster.certificateAuthorityData !== undefined
      ? { ca: pem(cluster.certificateAuthorityData) }
      : cluster.caFile !== undefined
      ? { ca: await Fs.readFile(resolve(cluster.caFile), "utf8") }
      : {}),
    ...(cluster.tlsServerName === undefined ? {} : { servername: cluster.tlsServerName }),
    ...(auth.certificate === undefined ? {} : {
      cert: await readMaterial(auth.certificate.cert, resolve),
      key: await readMaterial(auth.certificate.key, resolve)
    })
  })
  const bearer = auth.bearer
  const token = bearer === undefined
    ? undefined
    : bearer._tag === "Inline"
    ? () => Promise.resolve(Redacted.value(bearer.token).trim())
    : tokenFile(resolve(bearer.path), bearer.inline)
  return {
    server: cluster.server,
    dispatcher: async () => newDispatcher(cluster.proxyUrl, await readTls()),
    authenticate: async (headers) => {
      if (token !== undefined) headers["authorization"] = `Bearer ${await token()}`
    }
  }
}

/** A connection through client-node's `KubeConfig`, loaded now, for what tether does not apply itself. */
const delegated = async (path: string): Promise<Connection> => {
  const { KubeConfig, RequestContext } = await import("@kubernetes/client-node")
  const kubeConfig = new KubeConfig()
  kubeConfig.loadFromFile(path)
  const server = kubeConfig.getCurrentCluster()?.server
  if (server === undefined) throw new Error("it has no current cluster")
  const applied = async () => {
    const context = new RequestContext(server, "GET")
    await kubeConfig.applySecurityAuthentication(context)
    return context
  }
  // client-node's TLS settings in tether's dispatcher (HTTP/1.1); its SOCKS connector offers no
  // ALPN, so it speaks HTTP/1.1 already, and is kept.
  const dispatcher = async (): Promise<Dispatcher> => {
    const proxyUrl = kubeConfig.getCurrentCluster()?.proxyUrl
    if (proxyUrl?.startsWith("socks") === true) {
      const socks = (await applied()).getDispatcher()
      if (socks === undefined) throw new Error(`no dispatcher for the SOCKS proxy ${proxyUrl}`)
      return socks
    }
    const applies: Https.RequestOptions = {}
    await kubeConfig.applyToHTTPSOptions(applies)
    return newDispatcher(proxyUrl, {
      rejectUnauthorized: applies.rejectUnauthorized !== false,
      ...(applies.ca === undefined ? {} : { ca: applies.ca }),
      ...(applies.cert === undefined ? {} : { cert: applies.cert }),
      ...(applies.key === undefined ? {} : { key: applies.key }),
      ...(applies.servername === undefined ? {} : { servername: applies.servername })
    })
  }
  return {
    server,
    dispatcher,
    authenticate: async (headers) => {
      for (const [name, value] of Object.entries((await applied()).getHeaders())) headers[name.toLowerCase()] = value
    }
  }
}

/**
 * The pod's own ServiceAccount: `https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT`, the
 * CA and token the kubelet mounts in `folder`. Throws outside a pod.
 *
 * @category constructors
 */
export const inCluster = (options: {
  readonly env?: Readonly<Record<string, string | undefined>>
  /** Default `/var/run/secrets/kubernetes.io/serviceaccount`. */
  readonly folder?: string
} = {}): Connection => {
  const env = options.env ?? process.env
  const folder = options.folder ?? "/var/run/secrets/kubernetes.io/serviceaccount"
  const host = env["KUBERNETES_SERVICE_HOST"]
  const port = env["KUBERNETES_SERVICE_PORT"]
  // Without them the address would be "https://undefined:undefined" and every call would fail,
  // for ever: refuse at start instead.
  if (!host || !port) throw new Error("not running in a cluster (KUBERNETES_SERVICE_HOST/PORT unset): pass --kubeconfig")
  return direct(
    { server: `https://${Net.isIPv6(host) ? `[${host}]` : host}:${port}`, caFile: `${folder}/ca.crt` },
    { _tag: "Direct", certificate: undefined, bearer: { _tag: "File", path: `${folder}/token`, inline: undefined } },
    (path) => path
  )
}

const firstLine = (error: unknown): string =>
  error instanceof Error ? error.message.split("\n")[0] ?? "unreadable" : "unreadable"

/**
 * A connection from a kubeconfig file, or the pod's own ServiceAccount when `path` is undefined.
 * Every file it names is read once here, so a process with unreadable credentials fails at
 * start; relative paths are taken from the kubeconfig's folder.
 *
 * @category constructors
 */
export const load = (cluster: string, path: string | undefined): Effect.Effect<Connection, KubeError.KubeError> =>
  Effect.tryPromise({
    try: async () => {
      if (path === undefined) return checked(inCluster())
      const parsed = Kubeconfig.parseClient(await Fs.readFile(path, "utf8"))
      if (parsed._tag === "Failure") throw new Error(parsed.failure.message)
      const { cluster: entry, auth } = parsed.success
      if (auth._tag === "Plugin" || entry.proxyUrl?.startsWith("socks") === true) return delegated(path)
      const refused = checkScheme(entry)
      if (refused !== undefined) throw new Error(refused)
      return checked(direct(entry, auth, (reference) => Kubeconfig.resolveReference(path, reference)))
    },
    catch: (error) =>
      new KubeError.KubeError({
        cluster,
        operation: path === undefined ? "load the in-cluster configuration" : `load kubeconfig ${path}`,
        reason: "Invalid",
        detail: firstLine(error)
      })
  })

/**
 * Reads every file the connection names once (the dispatcher it builds is closed), so unreadable
 * credentials fail now rather than on a first request.
 *
 * @category constructors
 */
export const checked = async (connection: Connection): Promise<Connection> => {
  await (await connection.dispatcher()).close()
  await connection.authenticate({})
  return connection
}
