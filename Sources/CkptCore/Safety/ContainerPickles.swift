import Foundation

/// Finding the pickles of a file, the way torch unpickles them.
enum ContainerPickles {
    /// The zip records holding pickles: `data.pkl` first, then any other `.pkl` record (TorchScript's
    /// `constants.pkl`).
    static func records(of zip: ZipReader) -> [ZipEntry] {
        var out: [ZipEntry] = []
        if let d = zip.entry(named: "data.pkl") { out.append(d) }
        for e in zip.entries where e.name.hasSuffix(".pkl") && !out.contains(e) { out.append(e) }
        return out
    }

    /// Scans the pickles of a file without decoding it as a checkpoint: the `.pkl` records of a zip,
    /// or up to five pickles back to back from the start of any other file (the legacy format; a bare
    /// pickle is the first of them, which torch.load unpickles before it can check anything).
    ///
    /// The container is the one torch.load reads (``ContainerAudit/reading``): a zip only when it starts at byte 0,
    /// read as torch's reader reads it (lenient: duplicate names, disagreeing local headers and wrong CRCs do not
    /// stop torch, so they do not stop the scan); a torch 0.1.x tar's pickles (``LegacyTarReader/rawScans``);
    /// else the pickle stream from byte 0, even when a zip follows it.
    static func rawScans(path: String, reading: ContainerAudit.Reading, limits: PickleLimits) throws
        -> (format: String, scans: [PickleScan])
    {
        switch reading {
        case .zip:
            let zip = try ZipReader(path: path, lenient: true)
            defer { zip.close() }
            var scans: [PickleScan] = []
            for e in records(of: zip) {
                let bytes = try zip.readAll(e, limit: Checkpoint.maxPickleBytes, verifyCRC: false)
                scans.append(PickleScanner.scan(bytes, label: e.name, limits: limits))
            }
            return (reading.rawValue, scans)
        case .legacyTar:
            return (reading.rawValue, try LegacyTarReader.rawScans(path: path, limits: limits))
        case .pickleStream:
            return (reading.rawValue, try streamScans(path: path, limits: limits))
        case .shards:
            throw CheckpointError.notACheckpoint("a sharded index holds no pickle of its own")
        }
    }

    /// Up to five pickles from the start of the file, reading a growing prefix until they are complete.
    static func streamScans(path: String, limits: PickleLimits) throws -> [PickleScan] {
        guard let h = FileHandle(forReadingAtPath: path) else { throw CheckpointError.io("cannot open for reading") }
        defer { try? h.close() }
        let size = (try? h.seekToEnd()) ?? 0
        var prefixLength = min(size, 1 << 20)
        while true {
            try h.seek(toOffset: 0)
            let prefix = Array(h.readData(ofLength: Int(prefixLength)))
            let scans = PickleScanner.scanSequence(prefix, count: 5, label: "pickle", limits: limits)
            if case .truncated? = scans.last?.error, prefixLength < size, prefixLength < Checkpoint.maxPickleBytes {
                prefixLength = min(size, prefixLength * 4, Checkpoint.maxPickleBytes)
                continue
            }
            return scans
        }
    }
}
