/// The safetensors writer: a ``SafetensorsPlan`` (convert to `.safetensors`) written as the header the plan holds,
/// then each tensor's row-major bytes. Reached through ``Checkpoint/write(_:sources:to:chunkSize:progress:)``.
enum SafetensorsWriter {
    /// Writes a safetensors plan at `outPath`, atomically; each tensor's row-major bytes stream from `source`
    /// in bounded chunks (``TensorElementReader``: views are gathered, whole storages CRC-checked).
    static func write(_ plan: SafetensorsPlan, source: Checkpoint, to outPath: String, chunkSize: Int,
                      progress: ((Int64) -> Void)?) throws
    {
        _ = try? AtomicOutput.removeStaleTemps(for: outPath)
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: chunkSize, alignment: 64)
        defer { buffer.deallocate() }
        try AtomicOutput.write(to: outPath) { tmp in
            let out = try ZipFileHandle.openForWriting(tmp)
            try plan.header.withUnsafeBytes { try out.writeAll($0) }
            var done: Int64 = 0
            for t in plan.tensors {
                let reader = try TensorElementReader(source, storageKey: t.tensor.storage.key, itemSize: t.tensor.dtype.itemSize,
                                                     view: StorageView(t.tensor))
                // `--half`: converted as it streams (``DTypeConverter``: torch's rounding).
                let to = plan.outputDTypes[t.tensor.storage.key] ?? t.tensor.dtype
                var converter = try DTypeConverter(from: t.tensor.dtype, to: to, chunkSize: chunkSize)
                var written: Int64 = 0
                while true {
                    let n = try reader.read(into: buffer)
                    if n == 0 { break }
                    let chunk = UnsafeRawBufferPointer(rebasing: buffer[0..<n])
                    if to == t.tensor.dtype { try out.writeAll(chunk) } else {
                        try converter.convert(chunk) { try out.writeAll($0) }
                    }
                    written += Int64(n)
                    done += Int64(n)
                    progress?(done)
                }
                try converter.finish()
                guard written == t.tensor.byteCount else {
                    throw CheckpointError.io("tensor \(t.name): \(written) bytes read, \(t.tensor.byteCount ?? 0) expected")
                }
            }
            try out.close()
        }
    }
}
