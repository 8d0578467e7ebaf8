/**
 * The one client-node configuration builder (ClientNodeKube.kubeConfigFor), used by the
 * provisioner's TokenRequest client and the service proxy's managed client: every cluster setting
 * the kubeconfig reader keeps reaches client-node, and the credentials are the ones given (none
 * when a token source supplies them).
 */
import { assert, describe, it } from "@effect/vitest"
import { Redacted } from "effect"
import * as ClientNodeKube from "../../src/kube/ClientNodeKube.ts"

const cluster = {
  server: "https://managed.example:6443",
  certificateAuthorityData: Buffer.from("-----BEGIN CERTIFICATE-----\n").toString("base64"),
  tlsServerName: "api.managed",
  insecureSkipTlsVerify: false,
  proxyUrl: "http://proxy.example:3128"
}

describe("kubeConfigFor", () => {
  it("carries the server and TLS settings, with a token", () => {
    const config = ClientNodeKube.kubeConfigFor(cluster, { _tag: "Token", token: Redacted.make("t0ken") })
    const current = config.getCurrentCluster()
    assert.deepInclude(current, {
      server: cluster.server,
      caData: cluster.certificateAuthorityData,
      tlsServerName: "api.managed",
      skipTLSVerify: false,
      proxyUrl: cluster.proxyUrl
    })
    assert.strictEqual(config.getCurrentUser()?.token, "t0ken")
  })

  it("with a client certificate, or with no credentials at all", () => {
    const cert = ClientNodeKube.kubeConfigFor({ server: "https://h", insecureSkipTlsVerify: true }, {
      _tag: "ClientCertificate",
      certData: "Y2VydA==",
      keyData: Redacted.make("a2V5")
    })
    assert.strictEqual(cert.getCurrentCluster()?.skipTLSVerify, true)
    assert.deepInclude(cert.getCurrentUser(), { certData: "Y2VydA==", keyData: "a2V5" })
    const none = ClientNodeKube.kubeConfigFor({ server: "https://h" })
    assert.isUndefined(none.getCurrentUser()?.token)
    assert.isUndefined(none.getCurrentUser()?.certData)
    assert.isUndefined(none.getCurrentCluster()?.caData)
  })
})
