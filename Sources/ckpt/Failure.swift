import CkptCore

/// An error already phrased for the user: `ckpt: <message>` and the exit code.
struct Failure: Error {
    var message: String
    var code: Int32 = 2

    init(message: String, code: Int32 = 2) {
        self.message = message
        self.code = code
    }

    /// `FILE: what is wrong`; exit 1 for an input refused as dangerous or ambiguous (see ``CheckpointError``), else 2.
    init(_ file: String, _ error: CheckpointError) {
        switch error {
        case .dangerousGlobals, .ambiguousContainer: self.init(message: "\(file): \(error)", code: 1)
        default: self.init(message: "\(file): \(error)")
        }
    }
}

/// The phases of a command's run, each naming the file a failure in it is the fault of: the one place that says
/// whether an error is the input's or the output's. Every failure becomes one line, `ckpt: FILE: what is wrong`.
enum Phase {
    /// Opening an input, reading it and planning from it: every failure is that file's.
    case reading(String)
    /// Checking the output's path and format before anything is written: every failure is the output's.
    case preparing(String)
    /// Writing the output from an input: a read fault (a ``CheckpointError``) is the input's, the rest the output's.
    case writing(String, from: String)

    /// Runs `body`, turning what it throws into a ``Failure`` naming the file at fault. A ``FileError`` (work on
    /// two inputs: diff, transfer) names its own file; a ``Failure`` is already phrased and passes through.
    func run<T>(_ body: () throws -> T) throws -> T {
        do {
            return try body()
        } catch let e as Failure {
            throw e
        } catch let e as FileError {
            throw Failure(e.path, e.error)
        } catch let e as CheckpointError {
            switch self {
            case .reading(let file), .preparing(let file), .writing(_, from: let file): throw Failure(file, e)
            }
        } catch {
            switch self {
            case .reading(let file), .preparing(let file), .writing(let file, from: _):
                throw Failure(message: "\(file): \(error)")
            }
        }
    }
}
