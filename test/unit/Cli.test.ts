/**
 * The `tether` command as a user meets it: help with defaults, and bad command lines that exit
 * non-zero with a one-line message (no stack trace). Runs the real entry point in a child process.
 */
import { assert, describe, it } from "@effect/vitest"
import * as ChildProcess from "node:child_process"
import { tetherEntry } from "../../src/testing/TetherEntry.ts"

const tether = (args: ReadonlyArray<string>, env: Record<string, string> = {}) =>
  ChildProcess.spawnSync(process.execPath, [tetherEntry(), ...args], {
    encoding: "utf8",
    timeout: 30_000,
    env: { ...process.env, POD_NAMESPACE: "", ...env }
  })

describe("tether CLI", () => {
  it("lists the subcommand and its flags with defaults", () => {
    const root = tether(["--help"])
    assert.strictEqual(root.status, 0)
    for (const subcommand of ["managed-kubeconfig-provisioner", "managed-apiserver-proxy", "service-relay", "service-proxy", "addon-agent"]) {
      assert.include(root.stdout, subcommand)
    }
    const help = tether(["managed-kubeconfig-provisioner", "--help"])
    assert.strictEqual(help.status, 0)
    for (const expected of ['--source-name', 'default "external-managed-kubeconfig"', "--token-expiration", "default 24h", "--refresh-before", "default 1h", "--sync-interval", "default 5m", 'default ":8000"']) {
      assert.include(help.stdout, expected)
    }
  })

  it.each([
    { name: "an unknown flag", args: ["--bogus"], expected: "Unrecognized flag: --bogus" },
    { name: "a bad duration", args: ["--cluster-name=c", "--token-expiration=1d"], expected: 'invalid duration "1d": unknown unit "d"' },
    { name: "a missing required flag", args: ["--target-namespace=t"], expected: "--cluster-name is required" },
    { name: "contradictory timings", args: ["--cluster-name=c", "--target-namespace=t", "--token-expiration=1h", "--refresh-before=2h"], expected: "--refresh-before (2h) must be shorter than --token-expiration (1h)" },
    { name: "a bad listen address", args: ["--cluster-name=c", "--health-probe-bind-address=8000"], expected: 'invalid listen address "8000"' },
    { name: "an unreadable kubeconfig", args: ["--cluster-name=c", "--target-namespace=t", "--kubeconfig=/nonexistent/kubeconfig"], expected: "failed to load kubeconfig /nonexistent/kubeconfig" }
  ])("exits non-zero on $name, saying what is wrong", ({ args, expected }) => {
    const run = tether(["managed-kubeconfig-provisioner", ...args])
    assert.notStrictEqual(run.status, 0)
    const output = run.stdout + run.stderr
    assert.include(output, expected)
    assert.notInclude(output, "    at ", "no stack trace")
  })
})
