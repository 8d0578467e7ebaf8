import { assert, describe, it } from "@effect/vitest"
import { loadYaml } from "@kubernetes/client-node"
import { Redacted, Result } from "effect"
import { createHash } from "node:crypto"
import * as Kubeconfig from "../../src/domain/Kubeconfig.ts"

const TOKEN = "eyJhbGciOiJSUzI1NiJ9.SECRET-TOKEN-payload.sig"
const KEY_DATA = Buffer.from("-----BEGIN PRIVATE KEY-----\nSECRET-KEY\n-----END PRIVATE KEY-----\n").toString("base64")
const CERT_DATA = Buffer.from("-----BEGIN CERTIFICATE-----\nCERT\n-----END CERTIFICATE-----\n").toString("base64")
const CA_DATA = Buffer.from("-----BEGIN CERTIFICATE-----\nCA\n-----END CERTIFICATE-----\n").toString("base64")

const tokenFile = (path: string) => Result.getOrThrow(Kubeconfig.parseTokenFilePath(path))

const secretsIn = (text: string): ReadonlyArray<string> =>
  [TOKEN, KEY_DATA, "SECRET-TOKEN", "SECRET-KEY"].filter((secret) => text.includes(secret))

/** A kubeconfig with one cluster `c`, one user `u`, context `ctx` (current unless overridden). */
const kubeconfig = (options: {
  readonly cluster?: string
  readonly user?: string
  readonly extra?: string
  readonly currentContext?: string | null
} = {}): string => {
  const cluster = options.cluster ?? `server: https://api.example.com:6443\n    certificate-authority-data: ${CA_DATA}`
  const user = options.user ?? `token: ${TOKEN}`
  const current = options.currentContext === null ? "" : `current-context: ${options.currentContext ?? "ctx"}\n`
  return `apiVersion: v1
kind: Config
clusters:
- name: c
  cluster:
    ${cluster}
users:
- name: u
  user:
    ${user}
contexts:
- name: ctx
  context:
    cluster: c
    user: u
${current}${options.extra ?? ""}`
}

const reasonOf = (result: Result.Result<unknown, Kubeconfig.KubeconfigError>) => {
  assert.isTrue(Result.isFailure(result), "expected a KubeconfigError")
  if (Result.isSuccess(result)) throw new Error("unreachable")
  const error = result.failure
  assert.deepStrictEqual(secretsIn(error.message), [], `message leaks a secret: ${error.message}`)
  assert.deepStrictEqual(secretsIn(String(error)), [])
  assert.deepStrictEqual(secretsIn(JSON.stringify(error)), [])
  assert.isFalse(error.retryable)
  return error.reason
}

describe("Kubeconfig", () => {
  describe("parseSource", () => {
    it("reads the current context's cluster and token", () => {
      const source = Result.getOrThrow(Kubeconfig.parseSource(kubeconfig()))
      assert.deepStrictEqual(source.cluster, { server: "https://api.example.com:6443", certificateAuthorityData: CA_DATA })
      assert.strictEqual(source.credentials._tag, "Token")
      if (source.credentials._tag === "Token") {
        assert.strictEqual(Redacted.value(source.credentials.token), TOKEN)
        assert.deepStrictEqual(secretsIn(String(source.credentials.token)), [])
      }
      assert.deepStrictEqual(secretsIn(JSON.stringify(source)), [])
    })

    it("carries tls-server-name, insecure-skip-tls-verify and proxy-url", () => {
      const source = Result.getOrThrow(Kubeconfig.parseSource(kubeconfig({
        cluster: "server: https://10.0.0.1\n    tls-server-name: api.internal\n    insecure-skip-tls-verify: true\n    " +
          "proxy-url: http://proxy:3128\n    extensions: []"
      })))
      assert.deepStrictEqual(source.cluster, {
        server: "https://10.0.0.1",
        tlsServerName: "api.internal",
        insecureSkipTlsVerify: true,
        proxyUrl: "http://proxy:3128"
      })
    })

    it("reports a certificate-authority path as a pending file", () => {
      const source = Result.getOrThrow(Kubeconfig.parseSource(kubeconfig({
        cluster: "server: https://api\n    certificate-authority: /etc/ca.crt"
      })))
      assert.strictEqual(source.cluster.caFile, "/etc/ca.crt")
      assert.isFalse(Kubeconfig.isSelfContained(source.cluster))
    })

    it("ignores the certificate-authority path when the data is inline", () => {
      const source = Result.getOrThrow(Kubeconfig.parseSource(kubeconfig({
        cluster: `server: https://api\n    certificate-authority: /etc/ca.crt\n    certificate-authority-data: ${CA_DATA}`
      })))
      assert.isUndefined(source.cluster.caFile)
      assert.strictEqual(source.cluster.certificateAuthorityData, CA_DATA)
    })

    it("reads an inline client certificate and key", () => {
      const source = Result.getOrThrow(Kubeconfig.parseSource(kubeconfig({
        user: `client-certificate-data: ${CERT_DATA}\n    client-key-data: ${KEY_DATA}`
      })))
      assert.strictEqual(source.credentials._tag, "ClientCertificate")
      if (source.credentials._tag === "ClientCertificate") {
        assert.strictEqual(source.credentials.certData, CERT_DATA)
        assert.strictEqual(Redacted.value(source.credentials.keyData), KEY_DATA)
      }
    })

    it("prefers the client certificate when a token is present too", () => {
      const source = Result.getOrThrow(Kubeconfig.parseSource(kubeconfig({
        user: `token: ${TOKEN}\n    client-certificate-data: ${CERT_DATA}\n    client-key-data: ${KEY_DATA}`
      })))
      assert.strictEqual(source.credentials._tag, "ClientCertificate")
    })

    it("uses the only cluster and user without a current context", () => {
      const source = Result.getOrThrow(Kubeconfig.parseSource(kubeconfig({ currentContext: null })))
      assert.strictEqual(source.cluster.server, "https://api.example.com:6443")
    })

    const secondCluster = "- name: c2\n  cluster:\n    server: https://other\n"
    it.each([
      { name: "YAML syntax", text: `clusters: [\n  token: ${TOKEN}`, tag: "Malformed" },
      { name: "empty document", text: "  \n", tag: "Malformed" },
      { name: "not a mapping", text: `- ${TOKEN}`, tag: "Malformed" },
      { name: "clusters not a list", text: `clusters: ${TOKEN}\n`, tag: "Malformed" },
      { name: "server not a string", text: kubeconfig({ cluster: "server: [1, 2]" }), tag: "Malformed" },
      { name: "bad base64 key", text: kubeconfig({ user: `client-certificate-data: ${CERT_DATA}\n    client-key-data: "${TOKEN}!"` }), tag: "Malformed" },
      { name: "duplicate names", text: kubeconfig({ extra: "" }).replace("- name: u\n", `- name: u\n  user: {token: ${TOKEN}}\n- name: u\n`), tag: "Malformed" },
      {
        name: "two clusters and no current context",
        text: kubeconfig({ currentContext: null }).replace("users:\n", `${secondCluster}users:\n`),
        tag: "NoCluster"
      },
      {
        name: "two users and no current context",
        text: kubeconfig({ currentContext: null }).replace("contexts:\n", `- name: u2\n  user:\n    token: x\ncontexts:\n`),
        tag: "NoUser"
      },
      { name: "missing context", text: kubeconfig({ currentContext: "nope" }), tag: "MissingContext" },
      { name: "missing cluster", text: kubeconfig().replace("cluster: c\n", "cluster: gone\n"), tag: "MissingCluster" },
      { name: "missing user", text: kubeconfig().replace("user: u\n", "user: gone\n"), tag: "MissingUser" },
      { name: "missing server", text: kubeconfig({ cluster: `certificate-authority-data: ${CA_DATA}` }), tag: "MissingServer" },
      { name: "exec", text: kubeconfig({ user: `token: ${TOKEN}\n    exec:\n      command: aws` }), tag: "UnsupportedAuth" },
      { name: "auth-provider", text: kubeconfig({ user: "auth-provider:\n      name: oidc" }), tag: "UnsupportedAuth" },
      { name: "impersonation", text: kubeconfig({ user: `token: ${TOKEN}\n    as: admin` }), tag: "UnsupportedAuth" },
      { name: "no credentials", text: kubeconfig({ user: "username: admin" }), tag: "NoCredentials" },
      { name: "certificate without key", text: kubeconfig({ user: `client-certificate-data: ${CERT_DATA}` }), tag: "NoCredentials" },
      { name: "key without certificate", text: kubeconfig({ user: `client-key-data: ${KEY_DATA}` }), tag: "NoCredentials" },
      {
        name: "client certificate file",
        text: kubeconfig({ user: `client-certificate: /home/me/cert.pem\n    client-key-data: ${KEY_DATA}` }),
        tag: "UnsupportedFileReference"
      },
      {
        name: "client key file",
        text: kubeconfig({ user: `client-certificate-data: ${CERT_DATA}\n    client-key: /home/me/key.pem` }),
        tag: "UnsupportedFileReference"
      },
      { name: "token file", text: kubeconfig({ user: "tokenFile: /var/run/token" }), tag: "UnsupportedFileReference" }
    ])("refuses $name with $tag", ({ tag, text }) => {
      assert.strictEqual(reasonOf(Kubeconfig.parseSource(text))._tag, tag)
    })

    it.each([
      { text: kubeconfig({ currentContext: null }).replace("users:\n", `${secondCluster}users:\n`), message: "kubeconfig must have a current context or exactly one cluster" },
      { text: kubeconfig().replace("cluster: c\n", "cluster: gone\n"), message: "current context references missing cluster \"gone\"" },
      { text: kubeconfig({ currentContext: "nope" }), message: "current context \"nope\" is not defined in contexts" },
      { text: kubeconfig({ cluster: "insecure-skip-tls-verify: true" }), message: "cluster \"c\" has no server" },
      { text: kubeconfig({ user: "exec:\n      command: aws" }), message: "user \"u\" uses exec, which is not supported in a kubeconfig stored in a Secret; use a token or an inline client certificate and key" },
      { text: kubeconfig({ user: "auth-provider:\n      name: gcp" }), message: "user \"u\" uses auth-provider, which is not supported in a kubeconfig stored in a Secret; use a token or an inline client certificate and key" },
      { text: kubeconfig({ user: "tokenFile: /t" }), message: "user \"u\" sets tokenFile to a file path, but a kubeconfig stored in a Secret cannot reference files of another machine; put the content in token instead" },
      { text: kubeconfig({ user: "client-key: /k\n    client-certificate-data: " + CERT_DATA }), message: "user \"u\" sets client-key to a file path, but a kubeconfig stored in a Secret cannot reference files of another machine; put the content in client-key-data instead" },
      { text: kubeconfig({ user: "username: admin\n    password: SECRET-KEY" }), message: "user \"u\" has neither a token nor a client certificate and key" },
      { text: `a: 1\n  token: ${TOKEN}\n`, message: "kubeconfig is malformed: not valid YAML at line 2, column 8: bad indentation of a mapping entry" },
      { text: kubeconfig({ cluster: "server: 6443" }), message: "kubeconfig is malformed: cluster \"c\": server must be a string" }
    ])("explains: $message", ({ message, text }) => {
      const result = Kubeconfig.parseSource(text)
      reasonOf(result)
      if (Result.isFailure(result)) assert.strictEqual(result.failure.message, message)
    })
  })

  describe("buildManaged", () => {
    it("writes cluster managed, user cluster-proxy and the token", () => {
      const text = Kubeconfig.buildManaged({
        cluster: { server: "https://api:6443", certificateAuthorityData: CA_DATA, tlsServerName: "api.internal", proxyUrl: "http://p:3128", insecureSkipTlsVerify: false },
        token: Redacted.make(TOKEN)
      })
      assert.deepStrictEqual(loadYaml(text), {
        apiVersion: "v1",
        kind: "Config",
        clusters: [{
          name: "managed",
          cluster: {
            server: "https://api:6443",
            "certificate-authority-data": CA_DATA,
            "tls-server-name": "api.internal",
            "insecure-skip-tls-verify": false,
            "proxy-url": "http://p:3128"
          }
        }],
        users: [{ name: "cluster-proxy", user: { token: TOKEN } }],
        contexts: [{ name: "managed", context: { cluster: "managed", user: "cluster-proxy" } }],
        "current-context": "managed"
      })
    })

    it("round-trips through parseSource", () => {
      const cluster = { server: "https://[::1]:6443", certificateAuthorityData: CA_DATA }
      const source = Result.getOrThrow(Kubeconfig.parseSource(Kubeconfig.buildManaged({ cluster, token: Redacted.make(TOKEN) })))
      assert.deepStrictEqual(source.cluster, cluster)
      assert.strictEqual(source.credentials._tag === "Token" && Redacted.value(source.credentials.token), TOKEN)
    })

    it("inlines a certificate-authority file read at the edge", () => {
      const pending = Result.getOrThrow(Kubeconfig.parseSource(kubeconfig({ cluster: "server: https://api\n    certificate-authority: /etc/ca.crt" })))
      const cluster = Kubeconfig.inlineCertificateAuthority(pending.cluster, "-----BEGIN CERTIFICATE-----\nCA\n-----END CERTIFICATE-----\n")
      assert.deepStrictEqual(cluster, { server: "https://api", certificateAuthorityData: CA_DATA })
      const text = Kubeconfig.buildManaged({ cluster, token: Redacted.make(TOKEN) })
      assert.notInclude(text, "/etc/ca.crt")
      assert.notInclude(text, "certificate-authority:")
    })

    it("writes tokenFile beside the token when asked, and nothing else changes", () => {
      const cluster = { server: "https://api:6443", certificateAuthorityData: CA_DATA }
      const plain = loadYaml<{ users: Array<{ name: string; user: Record<string, string> }> }>(Kubeconfig.buildManaged({ cluster, token: Redacted.make(TOKEN) }))
      const withFile = loadYaml<{ users: Array<{ name: string; user: Record<string, string> }> }>(
        Kubeconfig.buildManaged({ cluster, token: Redacted.make(TOKEN), tokenFile: tokenFile("/var/run/secrets/managed/token") })
      )
      assert.deepStrictEqual(withFile.users, [{ name: "cluster-proxy", user: { token: TOKEN, tokenFile: "/var/run/secrets/managed/token" } }])
      assert.deepStrictEqual({ ...withFile, users: plain.users }, plain)
      // A path YAML would otherwise read as something else stays a string.
      const odd = Kubeconfig.buildManaged({ cluster, token: Redacted.make(TOKEN), tokenFile: tokenFile("/x: y/#z/'\"/true") })
      const read = Result.getOrThrow(Kubeconfig.readBearerToken(odd))
      assert.strictEqual(read._tag === "File" && read.path, "/x: y/#z/'\"/true")
    })

    it("refuses to build with a CA file still pending", () => {
      assert.throws(() => Kubeconfig.buildManaged({ cluster: { server: "https://api", caFile: "/etc/ca.crt" }, token: Redacted.make(TOKEN) }), /inlineCertificateAuthority/)
    })
  })

  describe("readBearerToken", () => {
    it("returns the inline token of the current user", () => {
      const text = Kubeconfig.buildManaged({ cluster: { server: "https://api" }, token: Redacted.make(TOKEN) })
      const token = Result.getOrThrow(Kubeconfig.readBearerToken(text))
      assert.strictEqual(token._tag === "Inline" && Redacted.value(token.token), TOKEN)
    })

    it("returns a tokenFile as a path to resolve", () => {
      const token = Result.getOrThrow(Kubeconfig.readBearerToken(kubeconfig({ user: "tokenFile: /var/run/secrets/token" })))
      assert.deepStrictEqual(token, { _tag: "File", path: "/var/run/secrets/token", inline: undefined })
    })

    it("prefers a tokenFile to the inline token beside it, which stays the fallback (client-go's order)", () => {
      const text = Kubeconfig.buildManaged({ cluster: { server: "https://api" }, token: Redacted.make(TOKEN), tokenFile: tokenFile("/etc/managed/token") })
      const token = Result.getOrThrow(Kubeconfig.readBearerToken(text))
      assert.strictEqual(token._tag, "File")
      if (token._tag !== "File") return
      assert.strictEqual(token.path, "/etc/managed/token")
      assert.strictEqual(token.inline === undefined ? undefined : Redacted.value(token.inline), TOKEN)
    })

    it.each([
      { name: "exec", user: "exec:\n      command: x", tag: "UnsupportedAuth" },
      { name: "a client certificate", user: `client-certificate-data: ${CERT_DATA}\n    client-key-data: ${KEY_DATA}`, tag: "NoCredentials" }
    ])("refuses $name", ({ tag, user }) => {
      assert.strictEqual(reasonOf(Kubeconfig.readBearerToken(kubeconfig({ user })))._tag, tag)
    })
  })

  describe("parseTokenFilePath", () => {
    it.each(["/t", "/var/run/secrets/managed-kubeconfig/token", "/etc/a b/ü/token.txt", "/..hidden/.token"])("accepts %j", (path) => {
      assert.strictEqual(Result.getOrThrow(Kubeconfig.parseTokenFilePath(path)), path)
    })

    it.each([
      { path: "", reason: "Empty", message: "the token file path is empty" },
      { path: "token", reason: "Relative", message: "the token file path \"token\" must be absolute: consumers resolve a relative one against their own kubeconfig's folder" },
      { path: "./etc/token", reason: "Relative" },
      { path: " /etc/token", reason: "Relative" },
      { path: "/etc/tok\nen", reason: "ControlCharacter", message: "the token file path \"/etc/tok\\nen\" contains a control character" },
      { path: "/etc/\u0000token", reason: "ControlCharacter" },
      { path: "/etc/\u2028token", reason: "ControlCharacter" },
      { path: "/etc/\u007ftoken", reason: "ControlCharacter" },
      { path: "/etc/managed/", reason: "Directory", message: "the token file path \"/etc/managed/\" ends with \"/\": it must name the file the Secret's token key is mounted as" },
      { path: "/", reason: "Directory" },
      { path: "/etc//token", reason: "DotSegment" },
      { path: "/etc/../token", reason: "DotSegment", message: "the token file path \"/etc/../token\" has an empty, \".\" or \"..\" segment; give the plain path" },
      { path: "/etc/./token", reason: "DotSegment" },
      { path: `/${"a".repeat(4096)}`, reason: "TooLong", message: "the token file path is longer than 4096 characters" }
    ])("refuses $reason: $path", ({ message, path, reason }) => {
      const result = Kubeconfig.parseTokenFilePath(path)
      assert.isTrue(Result.isFailure(result))
      if (!Result.isFailure(result)) return
      assert.strictEqual(result.failure._tag, "InvalidTokenFilePath")
      assert.strictEqual(result.failure.reason, reason)
      if (message !== undefined) assert.strictEqual(result.failure.message, message)
      assert.notMatch(result.failure.message, /[\u0000-\u001f]/)
    })
  })

  describe("parseCluster", () => {
    it("reads the selected cluster without looking at the users", () => {
      const cluster = Result.getOrThrow(Kubeconfig.parseCluster(kubeconfig({ user: "exec:\n      command: x" })))
      assert.deepStrictEqual(cluster, { server: "https://api.example.com:6443", certificateAuthorityData: CA_DATA })
      const only = Result.getOrThrow(Kubeconfig.parseCluster(kubeconfig({ currentContext: null, cluster: "server: https://only" })))
      assert.strictEqual(only.server, "https://only")
    })

    it.each([
      { name: "a missing current context", text: kubeconfig({ currentContext: "gone" }), tag: "MissingContext" },
      { name: "a cluster without server", text: kubeconfig({ cluster: "tls-server-name: x" }), tag: "MissingServer" },
      { name: "an empty document", text: "", tag: "Malformed" }
    ])("refuses $name", ({ tag, text }) => {
      assert.strictEqual(reasonOf(Kubeconfig.parseCluster(text))._tag, tag)
    })
  })

  describe("parseClient", () => {
    const direct = (text: string) => {
      const client = Result.getOrThrow(Kubeconfig.parseClient(text))
      assert.strictEqual(client.auth._tag, "Direct")
      if (client.auth._tag !== "Direct") throw new Error("unreachable")
      return { cluster: client.cluster, auth: client.auth }
    }

    it("keeps file references for the edge: the CA, the client certificate and key, a tokenFile", () => {
      const { cluster, auth } = direct(kubeconfig({
        cluster: "server: https://hub:6443\n    certificate-authority: ca.crt\n    tls-server-name: hub.internal",
        user: "client-certificate: tls.crt\n    client-key: tls.key\n    tokenFile: token\n    token: fallback"
      }))
      assert.deepStrictEqual(cluster, { server: "https://hub:6443", caFile: "ca.crt", tlsServerName: "hub.internal" })
      assert.deepStrictEqual(auth.certificate, { cert: { _tag: "File", path: "tls.crt" }, key: { _tag: "File", path: "tls.key" } })
      assert.strictEqual(auth.bearer?._tag, "File")
      if (auth.bearer?._tag !== "File") return
      assert.strictEqual(auth.bearer.path, "token")
      assert.strictEqual(auth.bearer.inline === undefined ? undefined : Redacted.value(auth.bearer.inline), "fallback")
    })

    it("prefers inline data to a file path, and keeps the key redacted", () => {
      const { auth } = direct(kubeconfig({
        user: `client-certificate-data: ${CERT_DATA}\n    client-certificate: ignored.crt\n    client-key-data: ${KEY_DATA}\n    client-key: ignored.key`
      }))
      assert.strictEqual(auth.certificate?.cert._tag === "Data" && Redacted.value(auth.certificate.cert.base64), CERT_DATA)
      assert.strictEqual(auth.certificate?.key._tag === "Data" && Redacted.value(auth.certificate.key.base64), KEY_DATA)
      assert.deepStrictEqual(secretsIn(String(auth.certificate?.key)), [])
      assert.isUndefined(auth.bearer)
    })

    it("an inline token alone, or no credentials at all (anonymous)", () => {
      const token = direct(kubeconfig())
      assert.strictEqual(token.auth.bearer?._tag === "Inline" && Redacted.value(token.auth.bearer.token), TOKEN)
      assert.isUndefined(token.auth.certificate)
      const anonymous = direct(kubeconfig({ user: "{}" }))
      assert.deepStrictEqual([anonymous.auth.certificate, anonymous.auth.bearer], [undefined, undefined])
    })

    it.each([
      { kind: "exec", user: "exec:\n      command: gcloud" },
      { kind: "auth-provider", user: "auth-provider:\n      name: oidc" },
      { kind: "impersonation", user: `token: ${TOKEN}\n    as: admin` },
      { kind: "basic-auth", user: "username: admin\n    password: secret" }
    ] as const)("reports $kind as a plugin for client-node rather than refusing it", ({ kind, user }) => {
      assert.deepStrictEqual(Result.getOrThrow(Kubeconfig.parseClient(kubeconfig({ user }))).auth, { _tag: "Plugin", kind })
    })

    it.each([
      { name: "a certificate without its key", user: `client-certificate-data: ${CERT_DATA}`, detail: "a client certificate without its key" },
      { name: "a key without its certificate", user: "client-key: tls.key", detail: "a client key without its certificate" }
    ])("refuses $name", ({ detail, user }) => {
      const reason = reasonOf(Kubeconfig.parseClient(kubeconfig({ user })))
      assert.strictEqual(reason._tag, "NoCredentials")
      assert.include(reason.message, detail)
    })
  })

  describe("resolveReference", () => {
    it("resolves relative references against the kubeconfig's folder, keeps absolute ones", () => {
      assert.strictEqual(Kubeconfig.resolveReference("/etc/managed/kubeconfig", "token"), "/etc/managed/token")
      assert.strictEqual(Kubeconfig.resolveReference("/etc/managed/kubeconfig", "../ca/ca.crt"), "/etc/ca/ca.crt")
      assert.strictEqual(Kubeconfig.resolveReference("/etc/managed/kubeconfig", "/var/run/token"), "/var/run/token")
    })
  })

  describe("sourceHash", () => {
    it("is the hex sha256 of the bytes", () => {
      const expected = createHash("sha256").update("abc").digest("hex")
      assert.strictEqual(Kubeconfig.sourceHash("abc"), expected)
      assert.strictEqual(Kubeconfig.sourceHash(new TextEncoder().encode("abc")), expected)
      assert.strictEqual(expected, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
    })
  })
})
