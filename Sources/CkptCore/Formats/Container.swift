import Foundation

/// What a format adapter hands ``Checkpoint``: the graph, the storage source and what `info` shows.
struct OpenedContainer {
    var graph: PickleGraph
    var source: any StorageSource
    var format: ContainerFormat
    var fileSize: UInt64
    var root = ""
    /// Zip records; for the other formats, storages.
    var recordCount: Int
    var formatVersion: String? = nil
    var version: String? = nil
    var byteOrder: String? = "little"
    var metadata: [(key: String, value: String)] = []
    /// Raw scans of the pickles the format holds (none for safetensors and ONNX), run only when asked for:
    /// `keys` and `info` do not need them.
    var scanPickles: () -> [PickleScan] = { [] }
    /// A TorchScript archive's records, class declarations and constants.
    var torchScript: TorchScriptArchive? = nil
    /// A distributed checkpoint folder's layout (``DistributedFolder``).
    var distributed: DistributedLayout? = nil
}

/// The container a checkpoint was read from, as commands name it: ``description`` is the text `info`, `scan` and
/// `convert` print (`torch zip`, `sharded safetensors (3 shards)`).
public indirect enum ContainerFormat: Hashable, Sendable, CustomStringConvertible {
    /// A `torch.save` zip archive.
    case torchZip
    /// A `torch.jit.save` zip archive (it holds `constants.pkl`).
    case torchScript
    /// The pickle stream of `_use_new_zipfile_serialization=False` (torch before 1.6).
    case torchLegacy
    /// The tar of torch 0.1.x.
    case torchLegacyTar
    case safetensors
    case onnx
    /// A sharded checkpoint's index: the distinct formats of its shards (in the order of their text) and how
    /// many shards there are.
    case sharded(shardFormats: [ContainerFormat], shards: Int)
    /// A folder of per-rank files read as one checkpoint (``DistributedFolder``), named by its reader.
    case distributed(String)

    /// A sharded index over shards of these formats (any order, repeats allowed).
    static func index(over shardFormats: [ContainerFormat], shards: Int) -> ContainerFormat {
        .sharded(shardFormats: Set(shardFormats).sorted { $0.description < $1.description }, shards: shards)
    }

    public var description: String {
        switch self {
        case .torchZip: "torch zip"
        case .torchScript: "TorchScript"
        case .torchLegacy: "torch legacy"
        case .torchLegacyTar: "torch legacy tar"
        case .safetensors: "safetensors"
        case .onnx: "onnx"
        case .sharded(let inner, let shards):
            "sharded \(inner.map(\.description).joined(separator: " + ")) (\(shards) shard\(shards == 1 ? "" : "s"))"
        case .distributed(let name): name
        }
    }

    /// Whether this is a sharded checkpoint's index.
    public var isSharded: Bool {
        if case .sharded = self { return true }
        return false
    }
}

/// The container formats ``Checkpoint`` reads, told apart by their first bytes (and, for the formats without
/// a magic number, the file name's extension). What matches none of them is refused with what it is.
enum ContainerKind: Equatable {
    case zip, legacy, legacyTar, safetensors, shardIndex, onnx

    /// Classifies a regular file (``InputPath/resolve(_:)`` has refused everything else). One line per format,
    /// the first match wins: signatures first, then what is recognisably not a checkpoint (HTML, a Git LFS
    /// pointer, text), then the extensions of the formats whose damaged files should get their own reader's error.
    /// - Throws: ``CheckpointError/wrongKind(_:)`` for an empty file or one no reader knows, saying what it is.
    static func detect(path: String) throws(CheckpointError) -> ContainerKind {
        let (head, size) = try InputPath.head(path)
        let ext = (path as NSString).pathExtension.lowercased()
        let firstChar = head.first { ![0x20, 0x09, 0x0A, 0x0D].contains($0) }
        if size == 0 { throw .wrongKind("empty file") }
        // torch.load's `_is_zipfile`: the local-header magic at byte 0, nothing else (a zip after other bytes is read
        // as torch reads the file: a tar, or a pickle stream from byte 0; ContainerAudit notes the zip).
        if head.starts(with: [0x50, 0x4B, 0x03, 0x04]) { return .zip }
        if LegacyTarReader.looksLikeTar(head: head) { return .legacyTar }  // torch.load tries tar before the pickle stream
        if LegacyReader.looksLegacy(head: head) { return .legacy }
        if SafetensorsReader.looksLikeSafetensors(head: head, fileSize: size) { return .safetensors }
        if firstChar == UInt8(ascii: "{"), ext == "json" || head.firstRange(of: Array("\"weight_map\"".utf8)) != nil {
            return .shardIndex
        }
        if ONNXReader.looksLikeONNX(head: head) { return .onnx }
        if let foreign = InputPath.describeForeign(head: head) { throw .wrongKind(foreign) }
        if ext == "safetensors" { return .safetensors }
        if ext == "onnx" { return .onnx }
        throw .wrongKind("not a checkpoint: its first bytes (" + head.prefix(8).map { hex2($0) }.joined(separator: " ")
                         + ") match no format ckpt reads (torch zip or legacy, safetensors, sharded index, onnx)")
    }
}

private func hex2(_ b: UInt8) -> String { (b < 16 ? "0" : "") + String(b, radix: 16) }
