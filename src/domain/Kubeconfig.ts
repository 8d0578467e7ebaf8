/**
 * tether's one kubeconfig reader and writer, pure: the source kubeconfig (the external
 * managed-cluster kubeconfig on the hosting cluster, `parseSource`), the generated one
 * (`buildManaged`), what its consumers need of it (`parseCluster`, `readBearerToken`), and a
 * process's own kubeconfig (`parseClient`, applied by `kube/Connection`). The edge does the I/O:
 * it reads Secrets and files, resolves file references and, for the source, calls
 * `inlineCertificateAuthority`.
 *
 * Invariants:
 * - The generated kubeconfig never references a file: it lives in a Secret mounted by pods on
 *   other machines. `buildManaged` refuses (as a defect) a cluster whose `caFile` is pending.
 * - Secrets (tokens, private keys) are held in `Redacted`, and error messages never contain
 *   credential material or YAML text; they name fields, users, clusters and contexts only.
 * - Selection follows client-go: the current context's cluster and user; without a current
 *   context, the only cluster and the only user.
 *
 * @since 0.1.0
 */
import * as Yaml from "js-yaml"
import { Redacted, Result, Schema } from "effect"
import { createHash } from "node:crypto"
import * as Path from "node:path"

// ---------------------------------------------------------------------------------------------
// errors
// ---------------------------------------------------------------------------------------------

const q = (name: string): string => JSON.stringify(name)

/**
 * The YAML does not parse or has the wrong shape. `detail` names the place, never the content.
 *
 * @since 0.1.0
 * @category errors
 */
export class Malformed extends Schema.TaggedClass<Malformed>()("Malformed", { detail: Schema.String }) {
  get message(): string {
    return `kubeconfig is malformed: ${this.detail}`
  }
}

/**
 * @since 0.1.0
 * @category errors
 */
export class NoCluster extends Schema.TaggedClass<NoCluster>()("NoCluster", {}) {
  get message(): string {
    return "kubeconfig must have a current context or exactly one cluster"
  }
}

/**
 * No current context and not exactly one user, so the credentials are ambiguous.
 *
 * @since 0.1.0
 * @category errors
 */
export class NoUser extends Schema.TaggedClass<NoUser>()("NoUser", {}) {
  get message(): string {
    return "kubeconfig must have a current context or exactly one user"
  }
}

/**
 * @since 0.1.0
 * @category errors
 */
export class MissingContext extends Schema.TaggedClass<MissingContext>()("MissingContext", { name: Schema.String }) {
  get message(): string {
    return `current context ${q(this.name)} is not defined in contexts`
  }
}

/**
 * @since 0.1.0
 * @category errors
 */
export class MissingCluster extends Schema.TaggedClass<MissingCluster>()("MissingCluster", { name: Schema.String }) {
  get message(): string {
    return this.name === ""
      ? "current context names no cluster"
      : `current context references missing cluster ${q(this.name)}`
  }
}

/**
 * @since 0.1.0
 * @category errors
 */
export class MissingUser extends Schema.TaggedClass<MissingUser>()("MissingUser", { name: Schema.String }) {
  get message(): string {
    return this.name === "" ? "current context names no user" : `current context references missing user ${q(this.name)}`
  }
}

/**
 * @since 0.1.0
 * @category errors
 */
export class MissingServer extends Schema.TaggedClass<MissingServer>()("MissingServer", { cluster: Schema.String }) {
  get message(): string {
    return `cluster ${q(this.cluster)} has no server`
  }
}

/**
 * The user authenticates in a way a Secret-held kubeconfig cannot reproduce: `exec` and
 * `auth-provider` run plugins of the machine that wrote the kubeconfig, and impersonation
 * would silently change the identity that calls TokenRequest.
 *
 * @since 0.1.0
 * @category errors
 */
export class UnsupportedAuth extends Schema.TaggedClass<UnsupportedAuth>()("UnsupportedAuth", {
  user: Schema.String,
  kind: Schema.Literals(["exec", "auth-provider", "impersonation"])
}) {
  get message(): string {
    return `user ${q(this.user)} uses ${this.kind}, which is not supported in a kubeconfig stored in a Secret; ` +
      "use a token or an inline client certificate and key"
  }
}

/**
 * @since 0.1.0
 * @category errors
 */
export class NoCredentials extends Schema.TaggedClass<NoCredentials>()("NoCredentials", {
  user: Schema.String,
  detail: Schema.optional(Schema.String)
}) {
  get message(): string {
    return `user ${q(this.user)} has neither a token nor a client certificate and key` +
      (this.detail === undefined ? "" : ` (${this.detail})`)
  }
}

/**
 * A credential given as a file path. The path belongs to the machine that wrote the
 * kubeconfig; the pods using the Secret cannot read it.
 *
 * @since 0.1.0
 * @category errors
 */
export class UnsupportedFileReference extends Schema.TaggedClass<UnsupportedFileReference>()(
  "UnsupportedFileReference",
  {
    user: Schema.String,
    field: Schema.Literals(["client-certificate", "client-key", "tokenFile"])
  }
) {
  get message(): string {
    const inline = this.field === "tokenFile" ? "token" : `${this.field}-data`
    return `user ${q(this.user)} sets ${this.field} to a file path, but a kubeconfig stored in a Secret cannot ` +
      `reference files of another machine; put the content in ${inline} instead`
  }
}

/**
 * Why a kubeconfig could not be used. Never retryable as is: the same bytes give the same
 * answer, so wait for the source Secret to change.
 *
 * @since 0.1.0
 * @category errors
 */
export class KubeconfigError extends Schema.TaggedError<KubeconfigError>()("KubeconfigError", {
  reason: Schema.Union([
    Malformed,
    NoCluster,
    NoUser,
    MissingContext,
    MissingCluster,
    MissingUser,
    MissingServer,
    UnsupportedAuth,
    NoCredentials,
    UnsupportedFileReference
  ])
}) {
  override get message(): string {
    return this.reason.message
  }
  get retryable(): boolean {
    return false
  }
}

/**
 * A `--token-file-path` that a generated kubeconfig cannot carry. The path is the consumer's
 * mount point, not a secret, so the message quotes it (escaped: control characters show as
 * `\\u....`).
 *
 * @since 0.1.0
 * @category errors
 */
export class InvalidTokenFilePath extends Schema.TaggedError<InvalidTokenFilePath>()("InvalidTokenFilePath", {
  path: Schema.String,
  reason: Schema.Literals(["Empty", "Relative", "ControlCharacter", "Directory", "DotSegment", "TooLong"])
}) {
  override get message(): string {
    const shown = q(this.path.length > 256 ? `${this.path.slice(0, 256)}...` : this.path)
    switch (this.reason) {
      case "Empty":
        return "the token file path is empty"
      case "Relative":
        return `the token file path ${shown} must be absolute: consumers resolve a relative one against their own kubeconfig's folder`
      case "ControlCharacter":
        return `the token file path ${shown} contains a control character`
      case "Directory":
        return `the token file path ${shown} ends with "/": it must name the file the Secret's token key is mounted as`
      case "DotSegment":
        return `the token file path ${shown} has an empty, "." or ".." segment; give the plain path`
      case "TooLong":
        return `the token file path is longer than ${maxTokenFilePath} characters`
    }
  }
}

const failWith = (reason: KubeconfigError["reason"]) => Result.fail(new KubeconfigError({ reason }))
const malformed = (detail: string) => failWith(new Malformed({ detail }))

// ---------------------------------------------------------------------------------------------
// models
// ---------------------------------------------------------------------------------------------

/**
 * A kubeconfig cluster entry, keeping the fields tether carries over. Other fields
 * (extensions, disable-compression) are not carried.
 *
 * @since 0.1.0
 * @category models
 */
export interface ClusterEntry {
  readonly server: string
  /** Base64 PEM, as written in kubeconfig. */
  readonly certificateAuthorityData?: string
  /** A `certificate-authority` path still to be read and inlined by the edge. */
  readonly caFile?: string
  readonly tlsServerName?: string
  readonly insecureSkipTlsVerify?: boolean
  readonly proxyUrl?: string
}

/**
 * @since 0.1.0
 * @category models
 */
export type Credentials =
  | { readonly _tag: "Token"; readonly token: Redacted.Redacted<string> }
  | {
    readonly _tag: "ClientCertificate"
    /** Base64 PEM, as written in kubeconfig. */
    readonly certData: string
    /** Base64 PEM, as written in kubeconfig. */
    readonly keyData: Redacted.Redacted<string>
  }

/**
 * @since 0.1.0
 * @category models
 */
export interface SourceKubeconfig {
  readonly cluster: ClusterEntry
  readonly credentials: Credentials
}

/**
 * How a consumer of the generated kubeconfig finds its bearer token. A `File` is read (and re-read:
 * the file changes when the Secret volume updates) in preference to an `inline` token beside it,
 * which serves only while the file cannot be read, as in client-go.
 *
 * @since 0.1.0
 * @category models
 */
export type BearerToken =
  | { readonly _tag: "Inline"; readonly token: Redacted.Redacted<string> }
  | { readonly _tag: "File"; readonly path: string; readonly inline: Redacted.Redacted<string> | undefined }

declare const TokenFilePathBrand: unique symbol

/**
 * Where the consumers of a generated kubeconfig find the Secret's `token` key as a file: an
 * absolute, plain path, checked by {@link parseTokenFilePath}.
 *
 * @since 0.1.0
 * @category models
 */
export type TokenFilePath = string & { readonly [TokenFilePathBrand]: "TokenFilePath" }

/**
 * Key material a process's own kubeconfig gives inline (base64 PEM, as written) or as a file
 * path, relative ones still to be resolved against the kubeconfig's folder by the edge
 * ({@link resolveReference}).
 *
 * @since 0.1.0
 * @category models
 */
export type Material =
  | { readonly _tag: "Data"; readonly base64: Redacted.Redacted<string> }
  | { readonly _tag: "File"; readonly path: string }

/**
 * How a process authenticates with its own kubeconfig (`--kubeconfig`, `--hub-kubeconfig`):
 * - `Direct`: a client certificate and key and/or a bearer token (inline or a `tokenFile`), each
 *   optional, which tether applies itself; with neither, requests are anonymous;
 * - `Plugin`: a credential plugin (`exec`, `auth-provider`), impersonation or basic auth, which
 *   tether leaves to `@kubernetes/client-node`.
 *
 * @since 0.1.0
 * @category models
 */
export type ClientAuth =
  | {
    readonly _tag: "Direct"
    readonly certificate: { readonly cert: Material; readonly key: Material } | undefined
    readonly bearer: BearerToken | undefined
  }
  | { readonly _tag: "Plugin"; readonly kind: "exec" | "auth-provider" | "impersonation" | "basic-auth" }

/**
 * @since 0.1.0
 * @category models
 */
export interface ClientKubeconfig {
  readonly cluster: ClusterEntry
  readonly auth: ClientAuth
}

// ---------------------------------------------------------------------------------------------
// structural reading
// ---------------------------------------------------------------------------------------------

type Mapping = Readonly<Record<string, unknown>>

const isMapping = (u: unknown): u is Mapping => typeof u === "object" && u !== null && !Array.isArray(u)

/** js-yaml reasons are fixed phrases, but some quote a tag or alias; keep only the phrase. */
const safeYamlReason = (reason: unknown): string | undefined => {
  if (typeof reason !== "string") return undefined
  const phrase = reason.split(/["'<!&*]/, 1)[0]?.trim() ?? ""
  return phrase === "" ? undefined : phrase
}

/**
 * YAML 1.2's core schema plus merge keys (`<<: *anchor`), which client-go's YAML 1.1 reader
 * resolves: a kubeconfig kubectl reads the same way must not lose the merged fields here. The
 * merge work stays bounded (js-yaml counts merged keys, 10,000 at most per document).
 */
const schema = Yaml.CORE_SCHEMA.withTags(Yaml.mergeTag)

const loadDocument = (text: string): Result.Result<unknown, KubeconfigError> => {
  if (text.trim() === "") return malformed("the document is empty")
  try {
    return Result.succeed(Yaml.load(text, { schema }))
  } catch (error) {
    const cause = error as { readonly reason?: unknown; readonly mark?: { readonly line?: unknown; readonly column?: unknown } }
    const line = cause.mark?.line
    const column = cause.mark?.column
    const where = typeof line === "number" && typeof column === "number"
      ? ` at line ${line + 1}, column ${column + 1}`
      : ""
    const reason = safeYamlReason(cause.reason)
    return malformed(`not valid YAML${where}${reason === undefined ? "" : `: ${reason}`}`)
  }
}

const optionalString = (owner: Mapping, key: string, where: string): Result.Result<string | undefined, KubeconfigError> => {
  const value = owner[key]
  if (value === undefined || value === null || value === "") return Result.succeed(undefined)
  return typeof value === "string" ? Result.succeed(value) : malformed(`${where}: ${key} must be a string`)
}

const optionalBoolean = (owner: Mapping, key: string, where: string): Result.Result<boolean | undefined, KubeconfigError> => {
  const value = owner[key]
  if (value === undefined || value === null) return Result.succeed(undefined)
  return typeof value === "boolean" ? Result.succeed(value) : malformed(`${where}: ${key} must be true or false`)
}

const BASE64 = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/

const optionalBase64 = (owner: Mapping, key: string, where: string): Result.Result<string | undefined, KubeconfigError> =>
  Result.flatMap(optionalString(owner, key, where), (value) =>
    value === undefined || BASE64.test(value.replace(/[\r\n]/g, ""))
      ? Result.succeed(value)
      : malformed(`${where}: ${key} is not valid base64`))

interface Named {
  readonly name: string
  readonly body: Mapping
}

/** A named list (`clusters`, `users`, `contexts`) as a map; the bodies are read later, on demand. */
const namedList = (
  root: Mapping,
  key: "clusters" | "users" | "contexts",
  bodyKey: "cluster" | "user" | "context"
): Result.Result<ReadonlyMap<string, Named>, KubeconfigError> =>
  Result.gen(function*() {
    const list = root[key]
    const entries = new Map<string, Named>()
    if (list === undefined || list === null) return entries
    if (!Array.isArray(list)) return yield* malformed(`${key} must be a list`)
    for (const [index, entry] of list.entries()) {
      if (!isMapping(entry)) return yield* malformed(`${key}[${index}] must be a mapping`)
      const name = entry["name"]
      if (typeof name !== "string" || name === "") return yield* malformed(`${key}[${index}] has no name`)
      if (entries.has(name)) return yield* malformed(`${key} defines ${q(name)} twice`)
      const body = entry[bodyKey]
      if (body !== undefined && body !== null && !isMapping(body)) {
        return yield* malformed(`${key}[${index}] (${q(name)}): ${bodyKey} must be a mapping`)
      }
      entries.set(name, { name, body: body ?? {} })
    }
    return entries
  })

interface Document {
  readonly clusters: ReadonlyMap<string, Named>
  readonly users: ReadonlyMap<string, Named>
  readonly contexts: ReadonlyMap<string, Named>
  readonly currentContext: string | undefined
}

const readDocument = (text: string): Result.Result<Document, KubeconfigError> =>
  Result.gen(function*() {
    const root = yield* loadDocument(text)
    if (!isMapping(root)) return yield* malformed("the document is not a mapping")
    return {
      clusters: yield* namedList(root, "clusters", "cluster"),
      users: yield* namedList(root, "users", "user"),
      contexts: yield* namedList(root, "contexts", "context"),
      currentContext: yield* optionalString(root, "current-context", "top level")
    }
  })

const only = (entries: ReadonlyMap<string, Named>): Named | undefined =>
  entries.size === 1 ? entries.values().next().value : undefined

/** The current context's `{ cluster, user }` names, or undefined without a current context. */
const currentContextRefs = (doc: Document): Result.Result<{ cluster: string; user: string } | undefined, KubeconfigError> =>
  Result.gen(function*() {
    if (doc.currentContext === undefined) return undefined
    const context = doc.contexts.get(doc.currentContext)
    if (context === undefined) return yield* failWith(new MissingContext({ name: doc.currentContext }))
    const where = `context ${q(context.name)}`
    return {
      cluster: (yield* optionalString(context.body, "cluster", where)) ?? "",
      user: (yield* optionalString(context.body, "user", where)) ?? ""
    }
  })

const selectCluster = (doc: Document): Result.Result<Named, KubeconfigError> =>
  Result.gen(function*() {
    const refs = yield* currentContextRefs(doc)
    if (refs === undefined) return only(doc.clusters) ?? (yield* failWith(new NoCluster()))
    return doc.clusters.get(refs.cluster) ?? (yield* failWith(new MissingCluster({ name: refs.cluster })))
  })

const selectUser = (doc: Document): Result.Result<Named, KubeconfigError> =>
  Result.gen(function*() {
    const refs = yield* currentContextRefs(doc)
    if (refs === undefined) return only(doc.users) ?? (yield* failWith(new NoUser()))
    return doc.users.get(refs.user) ?? (yield* failWith(new MissingUser({ name: refs.user })))
  })

const readCluster = (entry: Named): Result.Result<ClusterEntry, KubeconfigError> =>
  Result.gen(function*() {
    const where = `cluster ${q(entry.name)}`
    const body = entry.body
    const server = yield* optionalString(body, "server", where)
    if (server === undefined) return yield* failWith(new MissingServer({ cluster: entry.name }))
    const certificateAuthorityData = yield* optionalBase64(body, "certificate-authority-data", where)
    // As in client-go, inline data wins over the file; then there is nothing to resolve.
    const caFile = certificateAuthorityData === undefined
      ? yield* optionalString(body, "certificate-authority", where)
      : undefined
    const tlsServerName = yield* optionalString(body, "tls-server-name", where)
    const insecureSkipTlsVerify = yield* optionalBoolean(body, "insecure-skip-tls-verify", where)
    const proxyUrl = yield* optionalString(body, "proxy-url", where)
    return {
      server,
      ...(certificateAuthorityData === undefined ? {} : { certificateAuthorityData }),
      ...(caFile === undefined ? {} : { caFile }),
      ...(tlsServerName === undefined ? {} : { tlsServerName }),
      ...(insecureSkipTlsVerify === undefined ? {} : { insecureSkipTlsVerify }),
      ...(proxyUrl === undefined ? {} : { proxyUrl })
    }
  })

const present = (value: unknown): boolean =>
  value !== undefined && value !== null && value !== "" && !(Array.isArray(value) && value.length === 0) &&
  !(isMapping(value) && Object.keys(value).length === 0)

/** Refuses what a Secret-held kubeconfig cannot carry; common to source and consumer reads. */
const checkAuthKind = (entry: Named): Result.Result<void, KubeconfigError> => {
  const body = entry.body
  if (present(body["exec"])) return failWith(new UnsupportedAuth({ user: entry.name, kind: "exec" }))
  if (present(body["auth-provider"])) return failWith(new UnsupportedAuth({ user: entry.name, kind: "auth-provider" }))
  if (["as", "as-uid", "as-groups", "as-user-extra"].some((key) => present(body[key]))) {
    return failWith(new UnsupportedAuth({ user: entry.name, kind: "impersonation" }))
  }
  return Result.void
}

const readCredentials = (entry: Named): Result.Result<Credentials, KubeconfigError> =>
  Result.gen(function*() {
    yield* checkAuthKind(entry)
    const where = `user ${q(entry.name)}`
    const body = entry.body
    const certData = yield* optionalBase64(body, "client-certificate-data", where)
    const keyData = yield* optionalBase64(body, "client-key-data", where)
    const token = yield* optionalString(body, "token", where)
    // Inline data wins over a file path (client-go's precedence); a path alone cannot be used.
    if (certData === undefined && (yield* optionalString(body, "client-certificate", where)) !== undefined) {
      return yield* failWith(new UnsupportedFileReference({ user: entry.name, field: "client-certificate" }))
    }
    if (keyData === undefined && (yield* optionalString(body, "client-key", where)) !== undefined) {
      return yield* failWith(new UnsupportedFileReference({ user: entry.name, field: "client-key" }))
    }
    if (token === undefined && (yield* optionalString(body, "tokenFile", where)) !== undefined) {
      return yield* failWith(new UnsupportedFileReference({ user: entry.name, field: "tokenFile" }))
    }
    // With both, the apiserver authenticates the client certificate first; so do we.
    if (certData !== undefined && keyData !== undefined) {
      return { _tag: "ClientCertificate", certData, keyData: Redacted.make(keyData) } as const
    }
    if (token !== undefined) return { _tag: "Token", token: Redacted.make(token) } as const
    if (certData !== undefined) return yield* failWith(new NoCredentials({ user: entry.name, detail: "client-key-data is missing" }))
    if (keyData !== undefined) {
      return yield* failWith(new NoCredentials({ user: entry.name, detail: "client-certificate-data is missing" }))
    }
    return yield* failWith(new NoCredentials({ user: entry.name }))
  })

// ---------------------------------------------------------------------------------------------
// API
// ---------------------------------------------------------------------------------------------

/**
 * Reads the source kubeconfig: the selected cluster and the credentials the provisioner
 * uses to call TokenRequest.
 *
 * **Gotchas**
 *
 * - `cluster.caFile` set means a `certificate-authority` path must be read at the edge and
 *   passed to `inlineCertificateAuthority` before `buildManaged`.
 * - When `*-data` and the file path are both set, the data wins and the path is ignored.
 * - A user with both a complete client certificate and a token yields `ClientCertificate`.
 *
 * @since 0.1.0
 * @category parsing
 */
export const parseSource = (text: string): Result.Result<SourceKubeconfig, KubeconfigError> =>
  Result.gen(function*() {
    const doc = yield* readDocument(text)
    const cluster = yield* readCluster(yield* selectCluster(doc))
    const credentials = yield* readCredentials(yield* selectUser(doc))
    return { cluster, credentials }
  })

/**
 * Whether the cluster entry has no pending file reference, i.e. can go to `buildManaged`.
 *
 * @since 0.1.0
 * @category predicates
 */
export const isSelfContained = (cluster: ClusterEntry): boolean => cluster.caFile === undefined

/**
 * Replaces the pending `caFile` with the PEM the edge read from it.
 *
 * @since 0.1.0
 * @category combinators
 */
export const inlineCertificateAuthority = (cluster: ClusterEntry, caPem: string): ClusterEntry => {
  const { caFile: _caFile, ...rest } = cluster
  return { ...rest, certificateAuthorityData: Buffer.from(caPem, "utf8").toString("base64") }
}

/** PATH_MAX on Linux. */
const maxTokenFilePath = 4096

// eslint-disable-next-line no-control-regex
const CONTROL = /[\u0000-\u001f\u007f-\u009f\u2028\u2029]/

/**
 * Checks a token file path for {@link buildManaged}: absolute (a relative path would be resolved
 * against each consumer's kubeconfig folder, which differs per mount), no control characters, not
 * a folder, no empty, `.` or `..` segment, at most 4096 characters.
 *
 * @since 0.1.0
 * @category parsing
 */
export const parseTokenFilePath = (path: string): Result.Result<TokenFilePath, InvalidTokenFilePath> => {
  const fail = (reason: InvalidTokenFilePath["reason"]) => Result.fail(new InvalidTokenFilePath({ path, reason }))
  if (path === "") return fail("Empty")
  if (CONTROL.test(path)) return fail("ControlCharacter")
  if (path.length > maxTokenFilePath) return fail("TooLong")
  if (!path.startsWith("/")) return fail("Relative")
  if (path.endsWith("/")) return fail("Directory")
  if (path.slice(1).split("/").some((segment) => segment === "" || segment === "." || segment === "..")) return fail("DotSegment")
  return Result.succeed(path as TokenFilePath)
}

/**
 * The `--token-file-path` flag's value: empty or absent keeps the inline-token kubeconfig.
 *
 * @since 0.1.0
 * @category parsing
 */
export const optionalTokenFilePath = (flag: string | undefined): Result.Result<TokenFilePath | undefined, InvalidTokenFilePath> =>
  flag === undefined || flag === "" ? Result.succeed(undefined) : parseTokenFilePath(flag)

/**
 * Names in the generated kubeconfig.
 *
 * @since 0.1.0
 * @category constants
 */
export const managedNames = { cluster: "managed", user: "cluster-proxy", context: "managed" } as const

/**
 * The generated kubeconfig: cluster `managed` (server, certificate-authority-data,
 * tls-server-name, insecure-skip-tls-verify, proxy-url as present), user `cluster-proxy`
 * with the token, context and current-context `managed`. The only place a token is
 * unwrapped in this module.
 *
 * With `tokenFile`, the user also carries `tokenFile: <path>` beside `token`: client-go re-reads
 * that file and prefers it to the inline token, so a consumer that mounts the Secret's `token` key
 * there follows rotations without a restart, and one that does not still has the inline token.
 *
 * **Gotchas**
 *
 * - Throws when `cluster.caFile` is still set: writing the path would hand pods a file they
 *   do not have, and dropping it would silently lose the CA. Inline it first
 *   (`inlineCertificateAuthority`); the throw marks a programming error (a defect).
 *
 * @since 0.1.0
 * @category constructors
 */
export const buildManaged = (input: {
  readonly cluster: ClusterEntry
  readonly token: Redacted.Redacted<string>
  readonly tokenFile?: TokenFilePath | undefined
}): string => {
  const { cluster } = input
  if (cluster.caFile !== undefined) {
    throw new Error("Kubeconfig.buildManaged: the certificate-authority file was not inlined; call inlineCertificateAuthority first")
  }
  const clusterBody: Record<string, unknown> = { server: cluster.server }
  if (cluster.certificateAuthorityData !== undefined) {
    clusterBody["certificate-authority-data"] = cluster.certificateAuthorityData
  }
  if (cluster.tlsServerName !== undefined) clusterBody["tls-server-name"] = cluster.tlsServerName
  if (cluster.insecureSkipTlsVerify !== undefined) clusterBody["insecure-skip-tls-verify"] = cluster.insecureSkipTlsVerify
  if (cluster.proxyUrl !== undefined) clusterBody["proxy-url"] = cluster.proxyUrl
  return Yaml.dump({
    apiVersion: "v1",
    kind: "Config",
    clusters: [{ name: managedNames.cluster, cluster: clusterBody }],
    users: [{
      name: managedNames.user,
      user: input.tokenFile === undefined
        ? { token: Redacted.value(input.token) }
        : { token: Redacted.value(input.token), tokenFile: input.tokenFile }
    }],
    contexts: [{ name: managedNames.context, context: { cluster: managedNames.cluster, user: managedNames.user } }],
    "current-context": managedNames.context
  }, { lineWidth: -1, noRefs: true })
}

/**
 * The bearer token of the current context's user, for consumers of the generated
 * kubeconfig. A `tokenFile` is returned as a path for the edge to read (and re-read: the
 * file changes when the Secret volume updates), with the inline `token`, if any, as the
 * fallback while the file cannot be read (client-go's precedence: the file wins).
 *
 * @since 0.1.0
 * @category parsing
 */
export const readBearerToken = (text: string): Result.Result<BearerToken, KubeconfigError> =>
  Result.gen(function*() {
    const doc = yield* readDocument(text)
    const user = yield* selectUser(doc)
    yield* checkAuthKind(user)
    const where = `user ${q(user.name)}`
    const token = yield* optionalString(user.body, "token", where)
    const inline = token === undefined ? undefined : Redacted.make(token)
    const path = yield* optionalString(user.body, "tokenFile", where)
    if (path !== undefined) return { _tag: "File", path, inline } as const
    if (inline !== undefined) return { _tag: "Inline", token: inline } as const
    return yield* failWith(new NoCredentials({ user: user.name, detail: "a bearer token is required" }))
  })

/**
 * The selected cluster (the current context's, or without a current context the only one), for
 * consumers that only need where and how to connect: the users are not looked at, so a user
 * the consumer could not use itself (a token file, exec) does not matter.
 *
 * @since 0.1.0
 * @category parsing
 */
export const parseCluster = (text: string): Result.Result<ClusterEntry, KubeconfigError> =>
  Result.gen(function*() {
    const doc = yield* readDocument(text)
    return yield* readCluster(yield* selectCluster(doc))
  })

/**
 * Reads a process's own kubeconfig: the selected cluster (a `certificate-authority` path stays
 * in `caFile` for the edge to read) and how the selected user authenticates. Unlike
 * {@link parseSource}, file references are allowed (the files are on this machine), and
 * plugins are reported rather than refused.
 *
 * **Gotchas**
 *
 * - Inline data wins over a file path for the certificate and the key, as in client-go; a
 *   certificate without its key (or the reverse) is refused.
 * - With a client certificate and a token both present both are sent; the apiserver
 *   authenticates the certificate first.
 *
 * @since 0.1.0
 * @category parsing
 */
export const parseClient = (text: string): Result.Result<ClientKubeconfig, KubeconfigError> =>
  Result.gen(function*() {
    const doc = yield* readDocument(text)
    const cluster = yield* readCluster(yield* selectCluster(doc))
    const user = yield* selectUser(doc)
    return { cluster, auth: yield* readClientAuth(user) }
  })

const readClientAuth = (entry: Named): Result.Result<ClientAuth, KubeconfigError> =>
  Result.gen(function*() {
    const body = entry.body
    if (present(body["exec"])) return { _tag: "Plugin", kind: "exec" } as const
    if (present(body["auth-provider"])) return { _tag: "Plugin", kind: "auth-provider" } as const
    if (["as", "as-uid", "as-groups", "as-user-extra"].some((key) => present(body[key]))) {
      return { _tag: "Plugin", kind: "impersonation" } as const
    }
    if (present(body["username"]) || present(body["password"])) return { _tag: "Plugin", kind: "basic-auth" } as const
    const where = `user ${q(entry.name)}`
    const material = (dataKey: string, fileKey: string) =>
      Result.gen(function*() {
        const data = yield* optionalBase64(body, dataKey, where)
        if (data !== undefined) return { _tag: "Data", base64: Redacted.make(data) } as Material
        const path = yield* optionalString(body, fileKey, where)
        return path === undefined ? undefined : ({ _tag: "File", path } as Material)
      })
    const cert = yield* material("client-certificate-data", "client-certificate")
    const key = yield* material("client-key-data", "client-key")
    if (cert === undefined && key !== undefined) {
      return yield* failWith(new NoCredentials({ user: entry.name, detail: "a client key without its certificate" }))
    }
    if (cert !== undefined && key === undefined) {
      return yield* failWith(new NoCredentials({ user: entry.name, detail: "a client certificate without its key" }))
    }
    const token = yield* optionalString(body, "token", where)
    const inline = token === undefined ? undefined : Redacted.make(token)
    const tokenFile = yield* optionalString(body, "tokenFile", where)
    const bearer: BearerToken | undefined = tokenFile !== undefined
      ? { _tag: "File", path: tokenFile, inline }
      : inline !== undefined
      ? { _tag: "Inline", token: inline }
      : undefined
    return {
      _tag: "Direct",
      certificate: cert !== undefined && key !== undefined ? { cert, key } : undefined,
      bearer
    } as const
  })

/**
 * Where a file reference of the kubeconfig at `kubeconfigPath` (`certificate-authority`,
 * `tokenFile`) points: relative paths are resolved against the kubeconfig's folder, as client-go
 * does. Pure path arithmetic (a relative `kubeconfigPath` is taken from the working directory).
 *
 * @since 0.1.0
 * @category parsing
 */
export const resolveReference = (kubeconfigPath: string, reference: string): string =>
  Path.resolve(Path.dirname(Path.resolve(kubeconfigPath)), reference)

/**
 * Hex SHA-256 of the source kubeconfig. Pass the Secret's raw bytes (a string is hashed as
 * UTF-8), so the value matches the Go provisioner's annotation.
 *
 * @since 0.1.0
 * @category hashing
 */
export const sourceHash = (bytes: Uint8Array | string): string => createHash("sha256").update(bytes).digest("hex")
