/**
 * Kubeconfig files as operators and pods hand them to tether, applied by tether's own connection
 * against a real apiserver: a CA, client certificate and key as files (relative paths), a
 * `tokenFile` with and without an inline fallback, `tls-server-name`, `insecure-skip-tls-verify`,
 * and an `exec` plugin, which goes to client-node. Who the apiserver took the caller for shows in
 * its answer: the admin certificate reads (NotFound), a ServiceAccount token is refused by name
 * (Forbidden, the name in the message). Unusable files fail at load with a typed error.
 */
import { afterAll, assert, beforeAll, describe, it } from "@effect/vitest"
import { Effect, Exit, Redacted, Result, Scope } from "effect"
import * as Fs from "node:fs"
import * as Http2 from "node:http2"
import * as Os from "node:os"
import * as Path from "node:path"
import * as Kubeconfig from "../../src/domain/Kubeconfig.ts"
import * as ClientNodeKube from "../../src/kube/ClientNodeKube.ts"
import * as Connection from "../../src/kube/Connection.ts"
import { Apiserver } from "../../src/testing/index.ts"
import { noApiserver } from "../support/apiserver.ts"

describe.skipIf(noApiserver)("Connection (real apiserver)", () => {
  let scope: Scope.Closeable
  let server: Apiserver.ApiserverInfo
  let dir: string
  let token: string
  let admin: { readonly cert: string; readonly key: string }

  beforeAll(async () => {
    scope = await Effect.runPromise(Scope.make())
    server = await Effect.runPromise(Apiserver.make({ name: "connection" }).pipe(Scope.provide(scope)))
    token = await Effect.runPromise(Apiserver.serviceAccountToken(server, "conn", "caller", 3600))
    const source = Result.getOrThrow(Kubeconfig.parseSource(server.kubeconfigYaml))
    if (source.credentials._tag !== "ClientCertificate") throw new Error("the harness's admin uses a client certificate")
    admin = {
      cert: Buffer.from(source.credentials.certData, "base64").toString("utf8"),
      key: Buffer.from(Redacted.value(source.credentials.keyData), "base64").toString("utf8")
    }
    dir = Fs.mkdtempSync(Path.join(Os.tmpdir(), "tether-connection-"))
    Fs.writeFileSync(Path.join(dir, "ca.crt"), server.caPem)
    Fs.writeFileSync(Path.join(dir, "tls.crt"), admin.cert)
    Fs.writeFileSync(Path.join(dir, "tls.key"), admin.key, { mode: 0o600 })
    Fs.writeFileSync(Path.join(dir, "token"), `${token}\n`, { mode: 0o600 })
  })
  afterAll(async () => {
    if (dir !== undefined) Fs.rmSync(dir, { recursive: true, force: true })
    if (scope !== undefined) await Effect.runPromise(Scope.close(scope, Exit.void))
  })

  /** Writes a kubeconfig (JSON is YAML) with one cluster and one user into the test's folder. */
  let written = 0
  const kubeconfig = (cluster: Record<string, unknown>, user: Record<string, unknown>): string => {
    const path = Path.join(dir, `kubeconfig-${++written}`)
    Fs.writeFileSync(path, JSON.stringify({
      apiVersion: "v1",
      kind: "Config",
      clusters: [{ name: "c", cluster: { server: server.server, ...cluster } }],
      users: [{ name: "u", user }],
      contexts: [{ name: "ctx", context: { cluster: "c", user: "u" } }],
      "current-context": "ctx"
    }))
    return path
  }

  /** Who the apiserver took the caller for, from its answer to a read of a missing Secret. */
  const answerTo = (path: string) =>
    Effect.gen(function*() {
      const connection = yield* Connection.load("test", path)
      const error = yield* Effect.flip(ClientNodeKube.make({ cluster: "test", connection }).getSecret("conn", "missing"))
      return { reason: error.reason, message: error.message }
    })

  const loadFailure = (path: string) =>
    Effect.map(Effect.flip(Connection.load("test", path)), (error) => {
      assert.strictEqual(error.reason, "Invalid")
      assert.notInclude(error.message, token.slice(0, 40))
      return error.message
    })

  const asCaller = "system:serviceaccount:conn:caller"

  /** A kubeconfig user whose token comes from an exec plugin (which client-node runs) printing the ServiceAccount token. */
  const execUser = (name: string) => {
    const plugin = Path.join(dir, name)
    const credential = { apiVersion: "client.authentication.k8s.io/v1", kind: "ExecCredential", status: { token } }
    Fs.writeFileSync(plugin, `#!/bin/sh\ncat <<'EOF'\n${JSON.stringify(credential)}\nEOF\n`, { mode: 0o700 })
    return { exec: { apiVersion: "client.authentication.k8s.io/v1", command: plugin, interactiveMode: "Never" } }
  }

  it.effect("a CA file and a client certificate and key as files, relative to the kubeconfig", () =>
    Effect.gen(function*() {
      const answer = yield* answerTo(kubeconfig({ "certificate-authority": "ca.crt" }, { "client-certificate": "tls.crt", "client-key": "tls.key" }))
      assert.strictEqual(answer.reason, "NotFound")
    }))

  it.effect("a tokenFile, and the inline token beside it while the file cannot be read", () =>
    Effect.gen(function*() {
      const ca = { "certificate-authority": Path.join(dir, "ca.crt") }
      const fromFile = yield* answerTo(kubeconfig(ca, { tokenFile: "token", token: "not-the-token" }))
      assert.strictEqual(fromFile.reason, "Forbidden")
      assert.include(fromFile.message, asCaller)
      const fallback = yield* answerTo(kubeconfig(ca, { tokenFile: "missing-token", token }))
      assert.strictEqual(fallback.reason, "Forbidden")
      assert.include(fallback.message, asCaller)
    }))

  it.effect("an exec plugin is run by client-node", () =>
    Effect.gen(function*() {
      const answer = yield* answerTo(kubeconfig({ "certificate-authority": "ca.crt" }, execUser("credential-plugin")))
      assert.strictEqual(answer.reason, "Forbidden")
      assert.include(answer.message, asCaller)
    }))

  it.effect("TLS is verified: against the system roots, and against tls-server-name; skipped only when asked", () =>
    Effect.gen(function*() {
      const cert = { "client-certificate": "tls.crt", "client-key": "tls.key" }
      const systemRoots = yield* answerTo(kubeconfig({}, cert))
      assert.strictEqual(systemRoots.reason, "Transport")
      const wrongName = yield* answerTo(kubeconfig({ "certificate-authority": "ca.crt", "tls-server-name": "wrong.example" }, cert))
      assert.strictEqual(wrongName.reason, "Transport")
      const rightName = yield* answerTo(kubeconfig({ "certificate-authority": "ca.crt", "tls-server-name": "kubernetes.default.svc" }, cert))
      assert.strictEqual(rightName.reason, "NotFound")
      const insecure = yield* answerTo(kubeconfig({ "insecure-skip-tls-verify": true }, cert))
      assert.strictEqual(insecure.reason, "NotFound")
    }))

  it.effect("the pod's own ServiceAccount: the service address, the mounted CA and token", () =>
    Effect.gen(function*() {
      const folder = Path.join(dir, "serviceaccount")
      Fs.mkdirSync(folder, { recursive: true })
      Fs.writeFileSync(Path.join(folder, "ca.crt"), server.caPem)
      Fs.writeFileSync(Path.join(folder, "token"), token)
      const env = { KUBERNETES_SERVICE_HOST: "127.0.0.1", KUBERNETES_SERVICE_PORT: new URL(server.server).port }
      const connection = yield* Effect.promise(() => Connection.checked(Connection.inCluster({ env, folder })))
      const error = yield* Effect.flip(ClientNodeKube.make({ cluster: "test", connection }).getSecret("conn", "missing"))
      assert.strictEqual(error.reason, "Forbidden")
      assert.include(error.message, asCaller)
      assert.throws(() => Connection.inCluster({ env: {}, folder }), /not running in a cluster/)
    }))

  it.live("HTTP/1.1 where the server offers HTTP/2 as well, in tether's own connection and through client-node", () =>
    Effect.gen(function*() {
      // A TLS server with the apiserver's serving certificate that offers h2 and http/1.1 (as the
      // kube-apiserver does) and answers every request NotFound, noting the protocol it was asked in.
      const versions: Array<string> = []
      const pki = (file: string) => Fs.readFileSync(Path.join(server.dir, "pki", file), "utf8")
      const offersBoth = yield* Effect.acquireRelease(
        Effect.callback<Http2.Http2SecureServer>((resume) => {
          const listening = Http2.createSecureServer({ cert: pki("serving.crt"), key: pki("serving.key"), allowHTTP1: true }, (request, response) => {
            versions.push(request.httpVersion)
            response.writeHead(404, { "content-type": "application/json" })
            response.end(JSON.stringify({ kind: "Status", apiVersion: "v1", status: "Failure", reason: "NotFound", code: 404, message: "not here" }))
          })
          listening.listen(0, "127.0.0.1", () => resume(Effect.succeed(listening)))
        }),
        (listening) => Effect.callback<void>((resume) => void listening.close(() => resume(Effect.void)))
      )
      const address = offersBoth.address()
      if (address === null || typeof address === "string") return assert.fail("the server has no port")
      const at = { server: `https://127.0.0.1:${address.port}`, "certificate-authority": "ca.crt" }
      const own = yield* answerTo(kubeconfig(at, { token }))
      const throughClientNode = yield* answerTo(kubeconfig(at, execUser("h1-credential-plugin")))
      assert.deepStrictEqual([own.reason, throughClientNode.reason], ["NotFound", "NotFound"])
      assert.deepStrictEqual(versions, ["1.1", "1.1"])
    }))

  it.effect("unusable credentials fail at load, naming the file and never the token", () =>
    Effect.gen(function*() {
      const noToken = yield* loadFailure(kubeconfig({ "certificate-authority": "ca.crt" }, { tokenFile: "missing-token" }))
      assert.include(noToken, "missing-token")
      const noCa = yield* loadFailure(kubeconfig({ "certificate-authority": "missing-ca.crt" }, { token }))
      assert.include(noCa, "missing-ca.crt")
      const noKey = yield* loadFailure(kubeconfig({ "certificate-authority": "ca.crt" }, { "client-certificate": "tls.crt" }))
      assert.include(noKey, "a client certificate without its key")
      const plain = yield* loadFailure(kubeconfig({ server: server.server.replace("https:", "http:") }, { token }))
      assert.include(plain, "plain HTTP")
      const malformed = Path.join(dir, "malformed")
      Fs.writeFileSync(malformed, `clusters: [\n  token: ${token}`)
      assert.include(yield* loadFailure(malformed), "not valid YAML")
    }))
})
