import Foundation

/// What a format adapter hands ``Checkpoint``: the graph, the storage source and what `info` shows.
struct OpenedContainer {
    var graph: PickleGraph
    var source: any StorageSource
    var format: String
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
}

/// The container formats ``Checkpoint`` reads, told apart by their first bytes (and, for the formats without
/// a magic number, the file name's extension).
enum ContainerKind: Equatable {
    case zip, legacy, legacyTar, safetensors, shardIndex, onnx

    static func detect(path: String) -> ContainerKind {
        let ext = (path as NSString).pathExtension.lowercased()
        guard let h = FileHandle(forReadingAtPath: path) else { return .zip }
        let head = Array(h.readData(ofLength: 16))
        let size = (try? h.seekToEnd()) ?? 0
        try? h.close()
        if head.starts(with: [0x50, 0x4B]) { return .zip }  // "PK"
        if LegacyTarReader.looksLikeTar(path: path) { return .legacyTar }  // torch.load tries tar before the pickle stream
        if LegacyReader.looksLegacy(path: path) { return .legacy }
        if SafetensorsReader.looksLikeSafetensors(head: head, fileSize: size) || ext == "safetensors" {
            return .safetensors
        }
        if ext == "json" || head.first(where: { ![0x20, 0x09, 0x0A, 0x0D].contains($0) }) == UInt8(ascii: "{") {
            return .shardIndex
        }
        if ext == "onnx" || ONNXReader.looksLikeONNX(head: head) { return .onnx }
        return .zip
    }
}
