import Foundation

/// Runs Python with torch (the test oracle). The interpreter is `$CKPT_PYTHON`, else the
/// project's venv that `scripts/test` creates.
enum Oracle {
    static let repoRoot: URL = {
        var url = URL(fileURLWithPath: #filePath)
        for _ in 0..<3 { url.deleteLastPathComponent() }
        return url
    }()

    static var python: String {
        if let p = ProcessInfo.processInfo.environment["CKPT_PYTHON"], !p.isEmpty { return p }
        return repoRoot.appendingPathComponent(".venv/bin/python").path
    }

    struct Failure: Error, CustomStringConvertible {
        let description: String
    }

    /// Runs `code` with `args` (as sys.argv[1:]); returns stdout. Throws with stderr on failure.
    @discardableResult
    static func run(_ code: String, _ args: [String] = []) throws -> Data {
        guard FileManager.default.isExecutableFile(atPath: python) else {
            throw Failure(description: "no python with torch at \(python): run scripts/test, which creates it")
        }
        let p = Process()
        p.executableURL = URL(fileURLWithPath: python)
        p.arguments = ["-c", code] + args
        p.currentDirectoryURL = repoRoot
        let out = Pipe(), err = Pipe()
        p.standardOutput = out
        p.standardError = err
        try p.run()
        let o = out.fileHandleForReading.readDataToEndOfFile()
        let e = err.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        guard p.terminationStatus == 0 else {
            throw Failure(description: "python failed (\(p.terminationStatus)): \(String(decoding: e, as: UTF8.self))")
        }
        return o
    }

    /// A fresh temporary folder.
    static func tempDir() throws -> URL {
        let url = FileManager.default.temporaryDirectory.appendingPathComponent("ckpt-test-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
        return url
    }

    /// A committed fixture's path.
    static func fixture(_ name: String) -> String {
        repoRoot.appendingPathComponent("fixtures/\(name)").path
    }
}
