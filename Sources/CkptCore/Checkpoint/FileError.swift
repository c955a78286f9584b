/// A ``CheckpointError`` tied to the file it is about, for operations that read two or more
/// checkpoints (`diff`, `transfer`): the CLI prints `ckpt: <path>: <error>`.
public struct FileError: Error, Sendable, CustomStringConvertible {
    /// The file the error is about.
    public var path: String
    public var error: CheckpointError

    public init(path: String, error: CheckpointError) {
        self.path = path
        self.error = error
    }

    public var description: String { "\(path): \(error.description)" }
}

extension Checkpoint {
    /// Runs `body`, tying any ``CheckpointError`` it throws to this file.
    func attributing<T>(_ body: () throws(CheckpointError) -> T) throws(FileError) -> T {
        do { return try body() } catch { throw FileError(path: path, error: error) }
    }

    /// A record by name, or the file's top level when it holds no records (a bare state dict or module).
    func recordOrTop(_ name: String) throws(CheckpointError) -> NodeID {
        records.isEmpty ? graph.root : try record(named: name)
    }
}
