import { assert, describe, it } from "@effect/vitest"
import { Result } from "effect"
import * as ServerEndpoint from "../../src/domain/ServerEndpoint.ts"

describe("ServerEndpoint", () => {
  describe("parsing", () => {
    it.each([
      ["https://api.example.com:6443", { host: "api.example.com", port: 6443, scheme: "https" }],
      ["https://api.example.com", { host: "api.example.com", port: 443, scheme: "https" }],
      ["http://10.0.0.1", { host: "10.0.0.1", port: 80, scheme: "http" }],
      ["https://[::1]", { host: "::1", port: 443, scheme: "https" }],
      ["https://[fd00::10]:6443/prefix/path", { host: "fd00::10", port: 6443, scheme: "https" }],
      ["HTTPS://API.Example.com:443", { host: "api.example.com", port: 443, scheme: "https" }],
      ["https://user:pw@api:8443", { host: "api", port: 8443, scheme: "https" }]
    ] as const)("reads %s", (server, expected) => {
      assert.deepStrictEqual(Result.getOrThrow(ServerEndpoint.fromServerUrl(server)), expected)
    })

    it.each([
      ["ftp://files.example.com", "unsupported server scheme \"ftp\""],
      ["api.example.com:6443", "server URL has no scheme (expected https:// or http://)"],
      ["", "server URL has no scheme (expected https:// or http://)"],
      ["https://", "server URL has no host"],
      ["https://:6443", "server URL has no host"],
      ["https://user:SECRET@:6443", "server URL has no host"],
      ["https://api:99999", "server URL is not a valid URL"],
      ["https://SECRET@exa mple", "server URL is not a valid URL"]
    ])("refuses %j", (server, message) => {
      const result = ServerEndpoint.fromServerUrl(server)
      assert.isTrue(Result.isFailure(result))
      if (Result.isFailure(result)) {
        assert.strictEqual(result.failure.message, message)
        assert.notInclude(result.failure.message, "SECRET")
      }
    })
  })

  describe("formatting", () => {
    it.each([
      [{ host: "::1", port: 443, scheme: "https" }, "[::1]:443", "https://[::1]:443"],
      [{ host: "api", port: 6443, scheme: "https" }, "api:6443", "https://api:6443"],
      [{ host: "10.0.0.1", port: 80, scheme: "http" }, "10.0.0.1:80", "http://10.0.0.1:80"]
    ] as const)("formats %j", (endpoint, hostPort, url) => {
      assert.strictEqual(ServerEndpoint.hostPort(endpoint), hostPort)
      assert.strictEqual(ServerEndpoint.format(endpoint), url)
      assert.deepStrictEqual(Result.getOrThrow(ServerEndpoint.fromServerUrl(url)), endpoint)
    })
  })
})
