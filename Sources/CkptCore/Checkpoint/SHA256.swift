import Foundation
internal import CSys

/// SHA-256 of a file, streamed in bounded chunks (libcrypto's, with the CPU's SHA instructions where it has them).
public enum SHA256 {
    /// libcrypto initialized once, without its exit-time cleanup (``BackgroundDigests`` may be hashing at exit).
    static let initialized = ckpt_crypto_init() == 1

    /// The lowercase hex digest of the file at `path`, as `sha256sum` and Python's `hashlib.sha256` print it.
    public static func hex(ofFile path: String, chunkSize: Int = 1 << 20) throws(CheckpointError) -> String {
        guard initialized else { throw .io("sha256: libcrypto did not initialize") }
        let file = try FileRange.open(path)
        defer { try? file.close() }
        let size = try FileRange.size(file)
        guard let ctx = EVP_MD_CTX_new() else { throw .io("sha256: no digest context") }
        defer { EVP_MD_CTX_free(ctx) }
        guard EVP_DigestInit_ex(ctx, EVP_sha256(), nil) == 1 else { throw .io("sha256: digest init failed") }
        var failed = false
        do {
            try FileRange.stream(file, offset: 0, count: size, chunkSize: chunkSize, what: path) { chunk in
                if EVP_DigestUpdate(ctx, chunk.baseAddress, chunk.count) != 1 { failed = true }
            }
        } catch let e as CheckpointError {
            throw e
        } catch {
            throw .io("\(error)")
        }
        var digest = [UInt8](repeating: 0, count: 32)
        var length: UInt32 = 0
        guard !failed, EVP_DigestFinal_ex(ctx, &digest, &length) == 1, length == 32 else {
            throw .io("sha256: digest failed")
        }
        return digest.map { String(format: "%02x", $0) }.joined()
    }
}

/// SHA-256 digests of files, computed on a thread of their own from ``start()`` on (`ckpt average` hashes its
/// inputs while it averages them). ``wait()`` gives them in order, nil for a nil path, or throws the first file's
/// fault as a ``FileError`` naming it.
public final class BackgroundDigests: @unchecked Sendable {
    private let paths: [String?]
    private let condition = NSCondition()
    private var started = false
    private var result: Result<[String?], FileError>?

    public init(paths: [String?]) {
        self.paths = paths
    }

    /// Starts hashing (once).
    public func start() {
        _ = SHA256.initialized  // before the thread: the first use of libcrypto decides its exit-time cleanup
        condition.lock()
        defer { condition.unlock() }
        guard !started else { return }
        started = true
        let paths = paths
        let thread = Thread { [self] in
            var digests: [String?] = []
            var outcome: Result<[String?], FileError>
            do throws(FileError) {
                for p in paths {
                    guard let p else {
                        digests.append(nil)
                        continue
                    }
                    do throws(CheckpointError) { digests.append(try SHA256.hex(ofFile: p)) } catch {
                        throw FileError(path: p, error: error)
                    }
                }
                outcome = .success(digests)
            } catch {
                outcome = .failure(error)
            }
            condition.lock()
            result = outcome
            condition.broadcast()
            condition.unlock()
        }
        thread.name = "ckpt sha256"
        thread.start()
    }

    /// Waits for every digest (starting the work if ``start()`` was not called).
    public func wait() throws(FileError) -> [String?] {
        start()
        condition.lock()
        while result == nil { condition.wait() }
        let r = result!
        condition.unlock()
        return try r.get()
    }
}
