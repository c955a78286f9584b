import Foundation

/// Reads the torch 0.1.x tar format (torch/serialization.py `_legacy_load` -> `legacy_load`, which torch 2.13 still
/// runs for `weights_only=False`): a tar (read as Python's `tarfile` reads it) with members
///
/// - `storages`: a pickled count; per storage a pickled `(key, location, torch.<T>Storage)` and the storage as
///   `_write_file` wrote it (an int64 element count, then the raw bytes); then a pickled list of storage views
///   `(view_key, root_key, offset, numel)`, each the elements `offset ..< offset + numel` of its root;
/// - `tensors`: a pickled count; per tensor a pickled `(key, storage_key, tensor_type)` (the type is ignored: the
///   storage's dtype is the tensor's), then int32 ndim, 4 unused bytes, ndim int64 sizes, ndim int64 strides and an
///   int64 storage offset;
/// - `pickle`: the object, whose persistent ids are `str(key)` of a tensor or storage (a tuple id is a pickled
///   module class, `(class, source file, source)`: torch returns the class);
/// - `sys_info`, which torch does not read.
///
/// The object opens as the graph `torch.save` would write for it: each tensor a `_rebuild_tensor_v2` node over a
/// storage persistent id, each storage a persistent id; a storage view is a storage of its own whose bytes are its
/// range of the root's. Storage bytes stream from their place in the `storages` member.
enum LegacyTarReader {
    /// A member of the tar: where its bytes are.
    struct Member {
        var name: String
        var type: UInt8
        var offset: UInt64
        var size: UInt64
    }

    /// Whether the file's first 512 bytes (fewer: not a tar) are a tar header, as `tarfile.open` checks it.
    static func looksLikeTar(head: [UInt8]) -> Bool {
        head.count >= 512 && (try? header(Array(head.prefix(512)))) != nil
    }

    /// The pickles torch unpickles from a tar it cannot read as a checkpoint, scanned raw (for `ckpt scan`, when
    /// ``open(path:limits:)`` fails): the first pickle of `storages` and of `tensors` (their counts, which torch
    /// unpickles first) and the whole `pickle` member. The storage and tensor records after the counts sit between
    /// raw bytes that only a full read can step over; ``open(path:limits:)`` scans them.
    static func rawScans(path: String, limits: PickleLimits) throws(CheckpointError) -> [PickleScan] {
        let file = try FileRange.open(path)
        defer { try? file.close() }
        let size = try FileRange.size(file)
        let members = try listMembers(file, size: size)
        var scans: [PickleScan] = []
        for (name, whole) in [("storages", false), ("tensors", false), ("pickle", true)] {
            guard let m = members.last(where: { $0.name == name }) else { continue }
            let count = Int(min(m.size, whole ? Checkpoint.maxPickleBytes : 1 << 20))
            let bytes = try FileRange.readBytes(file, at: m.offset, count: count, what: "torch tar member '\(name)'")
            scans += whole ? [PickleScanner.scan(bytes, label: name, limits: limits)]
                           : PickleScanner.scanSequence(bytes, count: 1, label: name, limits: limits)
        }
        guard !scans.isEmpty else { throw .notACheckpoint("torch tar file has no 'storages', 'tensors' or 'pickle' member") }
        return scans
    }

    static func open(path: String, limits: PickleLimits) throws(CheckpointError) -> OpenedContainer {
        let file = try FileRange.open(path)
        defer { try? file.close() }
        let size = try FileRange.size(file)
        let members = try listMembers(file, size: size)
        func member(_ name: String) throws(CheckpointError) -> Member {
            // tarfile's getmember: the last member of that name.
            guard let m = members.last(where: { $0.name == name }) else {
                throw .notACheckpoint("torch tar file has no '\(name)' member")
            }
            guard m.type == UInt8(ascii: "0") || m.type == 0 || m.type == UInt8(ascii: "7") else {
                throw .notACheckpoint("torch tar member '\(name)' is not a regular file")
            }
            return m
        }
        var scans: [PickleScan] = []
        var small: [[UInt8]] = []  // the record pickles of `storages` and `tensors`, for the scan

        // storages
        let sm = try member("storages")
        var cursor = PickleCursor(file: file, member: sm, limits: limits)
        var storageTable: [String: (offset: UInt64, bytes: UInt64)] = [:]
        var order: [String] = []
        var roots: [Int64: (type: (module: String, name: String), dtype: DType, location: String, numel: Int64)] = [:]
        let storageCount = try cursor.count(&small)
        for _ in 0..<storageCount {
            let (g, bytes) = try cursor.next()
            small.append(bytes)
            guard let t = g.sequence(g.root), t.count == 3, let key = try? pythonInt(g, t[0]),
                  let location = g.string(t[1]), case .global(let module, let name) = g[t[2]]
            else { throw .notACheckpoint("torch tar storage record is not (key, location, storage type)") }
            guard module == "torch" || module == "torch.cuda", let dtype = DType.storageClasses[name] else {
                throw .notACheckpoint("torch tar storage \(key) has type \(module).\(name), which torch does not have")
            }
            let numel = try cursor.int64()
            let (bytes2, o) = UInt64(clamping: numel).multipliedReportingOverflow(by: UInt64(dtype.itemSize))
            guard numel >= 0, !o, bytes2 <= cursor.left else {
                throw .notACheckpoint("torch tar storage \(key) is cut short")
            }
            let k = String(key)
            if storageTable[k] == nil { order.append(k) }
            storageTable[k] = (cursor.position, bytes2)
            roots[key] = ((module, name), dtype, location, numel)
            cursor.skip(bytes2)
        }
        let (viewsGraph, viewsBytes) = try cursor.next()
        small.append(viewsBytes)
        guard let viewItems = viewsGraph.sequence(viewsGraph.root) else {
            throw .notACheckpoint("torch tar storage views are not a list")
        }
        for v in viewItems {
            guard let t = viewsGraph.sequence(v), t.count == 4, let target = try? pythonInt(viewsGraph, t[0]),
                  let root = try? pythonInt(viewsGraph, t[1]), let offset = viewsGraph.int(t[2]),
                  let numel = viewsGraph.int(t[3])
            else { throw .notACheckpoint("torch tar storage view is not (key, root key, offset, size)") }
            guard let r = roots[root] else { throw .notACheckpoint("torch tar storage view \(target) names no storage \(root)") }
            guard offset >= 0, numel >= 0, offset <= r.numel, numel <= r.numel - offset else {
                throw .notACheckpoint("torch tar storage view \(target) lies outside storage \(root)")
            }
            // The view is a storage of its own (as torch.load makes it, and torch.save would write it): its
            // elements are that range of the root's bytes.
            guard roots[target] == nil, let rb = storageTable[String(root)] else {
                throw .notACheckpoint("torch tar storage view \(target) has the key of a storage")
            }
            let item = UInt64(r.dtype.itemSize)
            roots[target] = (r.type, r.dtype, r.location, numel)
            storageTable[String(target)] = (rb.offset + UInt64(offset) * item, UInt64(numel) * item)
            order.append(String(target))
        }

        // tensors
        let tm = try member("tensors")
        cursor = PickleCursor(file: file, member: tm, limits: limits)
        struct TensorRecord { var storage: Int64; var shape: [Int64]; var stride: [Int64]; var offset: Int64 }
        var tensors: [Int64: TensorRecord] = [:]
        let tensorCount = try cursor.count(&small)
        for _ in 0..<tensorCount {
            let (g, bytes) = try cursor.next()
            small.append(bytes)
            guard let t = g.sequence(g.root), t.count == 3, let key = try? pythonInt(g, t[0]) else {
                throw .notACheckpoint("torch tar tensor record is not (key, storage key, type)")
            }
            guard let storage = try? pythonInt(g, t[1]) else {
                throw .notACheckpoint("torch tar tensor \(key) has no storage")
            }
            let ndimWord = try cursor.int64()
            let ndim = Int64(Int32(truncatingIfNeeded: ndimWord))  // an int32, then 4 bytes torch skips
            guard ndim >= 0, UInt64(ndim) * 16 + 8 <= cursor.left else {
                throw .notACheckpoint("torch tar tensor \(key) has a bad dimension count \(ndim)")
            }
            var shape: [Int64] = [], stride: [Int64] = []
            for _ in 0..<ndim { shape.append(try cursor.int64()) }
            for _ in 0..<ndim { stride.append(try cursor.int64()) }
            tensors[key] = TensorRecord(storage: storage, shape: shape, stride: stride, offset: try cursor.int64())
        }

        // pickle
        let pm = try member("pickle")
        guard pm.size <= Checkpoint.maxPickleBytes else { throw .notACheckpoint("torch tar pickle is too large") }
        let pickleBytes = try FileRange.readBytes(file, at: pm.offset, count: Int(pm.size), what: "torch tar member 'pickle'")
        var graph: PickleGraph
        do { graph = try PickleDecoder.decode(pickleBytes, limits: limits) } catch { throw .pickle(record: "pickle", error) }

        // torch's deserialized_objects: storages, then views over them, then tensors, one dict by int key.
        var storagePIDs: [Int64: NodeID] = [:]
        func storagePID(_ key: Int64) -> NodeID {
            if let id = storagePIDs[key] { return id }
            let r = roots[key]!
            let id = graph.add(.tuple([graph.add(.string("storage")), graph.add(.global(module: "torch", name: r.type.name)),
                                       graph.add(.string(String(key))), graph.add(.string(r.location)),
                                       graph.add(.int(r.numel))]))
            storagePIDs[key] = id
            return id
        }
        var orderedDict: NodeID?
        for i in graph.nodes.indices {
            guard case .persistent(let pid) = graph.nodes[i] else { continue }
            let id = NodeID(i)
            if let t = graph.sequence(pid) {
                guard let first = t.first else { throw .notACheckpoint("persistent id \(id) is an empty tuple") }
                graph[id] = graph[first]  // torch returns saved_id[0]: a module class
                continue
            }
            let key: Int64
            do { key = try pythonInt(graph, pid) } catch {
                throw .notACheckpoint("persistent id \(id) is not a tensor or storage key")
            }
            if let t = tensors[key] {
                let root = t.storage
                guard let r = roots[root] else { throw .notACheckpoint("torch tar tensor \(key) names no storage \(t.storage)") }
                let ref = TensorRef(node: id, tensorNode: id, storageNode: id,
                                    storage: StorageRef(key: String(root), storageModule: "torch", storageName: r.type.name,
                                                        dtype: r.dtype, location: r.location, numel: r.numel),
                                    dtype: r.dtype, storageOffset: t.offset, shape: t.shape, stride: t.stride,
                                    requiresGrad: false, isParameter: false)
                // As `set_` checks it, inside the storage (or view) the tensor is made on.
                do { try ref.check(name: String(key), recordBytes: nil) } catch {
                    throw .notACheckpoint("torch tar tensor \(key): \(error.reason)")
                }
                // A fresh (empty) backward-hooks OrderedDict per tensor, as torch.save writes them.
                if orderedDict == nil { orderedDict = graph.add(.global(module: "collections", name: "OrderedDict")) }
                let hooks = graph.add(.object(PickleObject(construction: .reduce, callable: orderedDict!,
                                                           args: graph.add(.tuple([])))))
                let args: [NodeID] = [graph.add(.persistent(pid: storagePID(root))), graph.add(.int(t.offset)),
                                      graph.add(.tuple(t.shape.map { graph.add(.int($0)) })),
                                      graph.add(.tuple(t.stride.map { graph.add(.int($0)) })),
                                      graph.add(.bool(false)), hooks]
                graph[id] = .object(PickleObject(construction: .reduce,
                    callable: graph.add(.global(module: "torch._utils", name: "_rebuild_tensor_v2")), args: graph.add(.tuple(args))))
            } else if roots[key] != nil {
                graph[id] = .persistent(pid: storagePID(key))
            } else {
                throw .notACheckpoint("persistent id \(id) names \(key), which is no tensor or storage of the file")
            }
        }

        let handle: FileHandle
        guard let h = FileHandle(forReadingAtPath: path) else { throw .io("cannot open for reading") }
        handle = h
        let table = FileStorageTable(handle: handle, storages: storageTable, order: order)
        // torch.load(weights_only=True) refuses the format before it unpickles anything.
        var main = PickleScanner.scan(pickleBytes, label: "pickle", limits: limits)
        main.weightsOnlyRefusal = "torch.load refuses the legacy .tar format with weights_only=True"
        let label = "storages and tensors records (\(small.count) pickles)"
        scans = [main, merged(small.map { PickleScanner.scan($0, label: label, limits: limits) }, label: label)]
        return OpenedContainer(graph: graph, source: table, format: .torchLegacyTar, fileSize: size,
                               recordCount: order.count, byteOrder: nil, scanPickles: { [scans] in scans })
    }

    /// Scans of many small pickles as one: globals by spelling with their counts and uses summed.
    static func merged(_ scans: [PickleScan], label: String) -> PickleScan {
        var out = PickleScan(label: label, protocolVersion: scans.first?.protocolVersion, end: 0)
        var at: [String: Int] = [:]
        for s in scans {
            for g in s.globals {
                if let i = at[g.key] { out.globals[i].absorb(g) } else {
                    at[g.key] = out.globals.count
                    out.globals.append(g)
                }
            }
            out.computed += s.computed
            out.opcodes += s.opcodes
            out.end += s.end
            if out.weightsOnlyRefusal == nil { out.weightsOnlyRefusal = s.weightsOnlyRefusal }
            if out.error == nil { out.error = s.error }
        }
        return out
    }

    /// `int(x)` as torch's persistent_load applies it to a key: an integer, or the decimal text of one.
    static func pythonInt(_ g: PickleGraph, _ id: NodeID) throws(CheckpointError) -> Int64 {
        if case .int(let v) = g[id] { return v }
        if let s = g.string(id) {
            let t = s.trimmingCharacters(in: .whitespaces)
            if let v = Int64(t.hasPrefix("+") ? String(t.dropFirst()) : t) { return v }
        }
        throw .notACheckpoint("key is not an integer")
    }

    // MARK: - The tar, as Python's tarfile reads it

    struct Header {
        var name: String
        var type: UInt8
        var size: UInt64
    }

    /// A 512-byte header block; nil for the all-zero block that ends the archive. Throws when the checksum is wrong.
    static func header(_ b: [UInt8]) throws(CheckpointError) -> Header? {
        guard b.count == 512 else { throw .notACheckpoint("tar header is cut short") }
        if b.allSatisfy({ $0 == 0 }) { return nil }
        // The ustar fields in order (POSIX pax "ustar Interchange Format"): name 100, mode 8, uid 8, gid 8, size 12,
        // mtime 12, chksum 8, typeflag 1, linkname 100, magic 6, version 2, uname 32, gname 32, devmajor 8,
        // devminor 8, prefix 155 (12 bytes of padding follow).
        var c = ByteCursor(b)
        let nameField: ArraySlice<UInt8>, sizeField: ArraySlice<UInt8>, checksumField: ArraySlice<UInt8>
        let type: UInt8, prefixField: ArraySlice<UInt8>
        do throws(ByteCursor.Failure) {
            nameField = try c.bytes(100)
            try c.skip(8 + 8 + 8)
            sizeField = try c.bytes(12)
            try c.skip(12)
            checksumField = try c.bytes(8)
            type = try c.u8()
            try c.skip(100 + 6 + 2 + 32 + 32 + 8 + 8)
            prefixField = try c.bytes(155)
        } catch {
            throw .notACheckpoint("tar header is cut short")
        }
        let stored = try number(checksumField)
        var unsigned = 256, signed = 256
        for (i, x) in b.enumerated() where !checksumField.indices.contains(i) {
            unsigned += Int(x)
            signed += Int(Int8(bitPattern: x))
        }
        guard stored == Int64(unsigned) || stored == Int64(signed) else { throw .notACheckpoint("tar header checksum is wrong") }
        let size = try number(sizeField)
        guard size >= 0 else { throw .notACheckpoint("tar member size is negative") }
        var name = text(nameField)
        let prefix = text(prefixField)
        if !prefix.isEmpty && ![UInt8(ascii: "L"), UInt8(ascii: "K"), UInt8(ascii: "S")].contains(type) {
            name = prefix + "/" + name
        }
        return Header(name: name, type: type, size: UInt64(size))
    }

    /// tarfile's `nts`: bytes up to the first NUL, as text.
    static func text(_ b: ArraySlice<UInt8>) -> String {
        String(decoding: b.prefix { $0 != 0 }, as: UTF8.self)
    }

    /// tarfile's `nti`: a base-256 number (first byte 0x80 or 0xff) or octal text.
    static func number(_ b: ArraySlice<UInt8>) throws(CheckpointError) -> Int64 {
        if let f = b.first, f == 0x80 || f == 0xFF {
            var n: Int64 = 0
            for x in b.dropFirst() {
                guard n < (Int64.max >> 8) else { throw .notACheckpoint("tar number is too large") }
                n = n << 8 | Int64(x)
            }
            return f == 0xFF ? n - (Int64(1) << (8 * Int64(b.count - 1))) : n
        }
        let t = text(b).trimmingCharacters(in: CharacterSet(charactersIn: " \t\n\r\u{0B}\u{0C}"))
        if t.isEmpty { return 0 }
        guard let v = Int64(t, radix: 8) else { throw .notACheckpoint("tar header holds a bad number") }
        return v
    }

    /// The members in order (pax `path`/`size` and GNU long names applied), up to the end block or the first
    /// header tarfile would stop at.
    static func listMembers(_ file: ZipFileHandle, size: UInt64) throws(CheckpointError) -> [Member] {
        var out: [Member] = []
        var offset: UInt64 = 0
        var global: [String: String] = [:]
        var local: [String: String] = [:]
        var longName: String?
        func blocks(_ n: UInt64) -> UInt64 { (n + 511) / 512 * 512 }
        while offset + 512 <= size {
            let block = try FileRange.readBytes(file, at: offset, count: 512, what: "tar header")
            let h: Header?
            do { h = try header(block) } catch {
                // tarfile stops listing at a bad header past the first; one right after a pax or long-name
                // header is an error.
                if out.isEmpty && offset == 0 || !local.isEmpty || longName != nil { throw error }
                break
            }
            guard var m = h else { break }
            let dataStart = offset + 512
            switch m.type {
            case UInt8(ascii: "x"), UInt8(ascii: "g"), UInt8(ascii: "L"), UInt8(ascii: "K"):
                guard m.size <= 1 << 20, dataStart + m.size <= size else { throw .notACheckpoint("tar extended header is too large") }
                let data = try FileRange.readBytes(file, at: dataStart, count: Int(m.size), what: "tar extended header")
                switch m.type {
                case UInt8(ascii: "x"): local.merge(try pax(data)) { $1 }
                case UInt8(ascii: "g"): global.merge(try pax(data)) { $1 }
                case UInt8(ascii: "L"): longName = text(data[...])
                default: break
                }
                offset = dataStart + blocks(m.size)
                continue
            default:
                break
            }
            let fields = global.merging(local) { $1 }
            if let p = fields["path"] { m.name = p }
            if let l = longName { m.name = l }
            if let s = fields["size"] {
                guard let v = UInt64(s) else { throw .notACheckpoint("tar pax size is not a number") }
                m.size = v
            }
            if fields.keys.contains(where: { $0.hasPrefix("GNU.sparse.") }) || m.type == UInt8(ascii: "S") {
                throw .notACheckpoint("tar member '\(m.name)' is sparse; not read")
            }
            local = [:]
            longName = nil
            // tarfile strips the trailing slash of directory names.
            while m.name.count > 1 && m.name.hasSuffix("/") { m.name.removeLast() }
            out.append(Member(name: m.name, type: m.type, offset: dataStart, size: m.size))
            let regular = [UInt8(ascii: "0"), 0, UInt8(ascii: "7")].contains(m.type)
            let known = Array("0123456".utf8) + [0, UInt8(ascii: "7")]
            if regular || !known.contains(m.type) {
                guard dataStart <= size, m.size <= size - dataStart else {
                    throw .notACheckpoint("tar member '\(m.name)' is cut short")
                }
                offset = dataStart + blocks(m.size)
            } else {
                offset = dataStart
            }
        }
        guard !out.isEmpty else { throw .notACheckpoint("tar file holds no members") }
        return out
    }

    /// PAX records: `LENGTH KEY=VALUE\n`.
    static func pax(_ data: [UInt8]) throws(CheckpointError) -> [String: String] {
        var out: [String: String] = [:]
        var i = 0
        while i < data.count {
            guard let sp = data[i...].firstIndex(of: 0x20), let n = Int(text(data[i..<sp])), n > 0,
                  i + n <= data.count, data[i + n - 1] == 0x0A,
                  let eq = data[(sp + 1)..<(i + n)].firstIndex(of: UInt8(ascii: "="))
            else {
                if data[i...].allSatisfy({ $0 == 0 }) { break }
                throw .notACheckpoint("tar pax header is malformed")
            }
            out[String(decoding: data[(sp + 1)..<eq], as: UTF8.self)] = String(decoding: data[(eq + 1)..<(i + n - 1)], as: UTF8.self)
            i += n
        }
        return out
    }
}

/// Reads a tar member as `pickle.load` reads a file: pickle after pickle, with raw bytes between them.
private struct PickleCursor {
    let file: ZipFileHandle
    let member: LegacyTarReader.Member
    let limits: PickleLimits
    /// Absolute file offset of the next byte.
    var position: UInt64
    var left: UInt64 { member.offset + member.size - position }

    init(file: ZipFileHandle, member: LegacyTarReader.Member, limits: PickleLimits) {
        self.file = file
        self.member = member
        self.limits = limits
        position = member.offset
    }

    /// The next pickle and its bytes; reads a growing window until it decodes.
    mutating func next() throws(CheckpointError) -> (PickleGraph, [UInt8]) {
        var window = min(left, 4096)
        while true {
            let bytes = try FileRange.readBytes(file, at: position, count: Int(window), what: "torch tar member '\(member.name)'")
            do {
                let r = try PickleDecoder.decodePrefix(bytes, offset: 0, limits: limits)
                position += UInt64(r.end)
                return (r.graph, Array(bytes[..<r.end]))
            } catch {
                if case .truncated = error, window < left, window < Checkpoint.maxPickleBytes {
                    window = min(left, window * 4)
                    continue
                }
                throw .pickle(record: member.name, error)
            }
        }
    }

    /// A pickled count of records that follow, each at least `minimum` bytes.
    mutating func count(_ small: inout [[UInt8]]) throws(CheckpointError) -> Int {
        let (g, bytes) = try next()
        small.append(bytes)
        guard let n = g.int(g.root), n >= 0, UInt64(n) <= left / 4 else {
            throw .notACheckpoint("torch tar member '\(member.name)' does not start with a plausible count")
        }
        return Int(n)
    }

    mutating func int64() throws(CheckpointError) -> Int64 {
        guard left >= 8 else { throw .notACheckpoint("torch tar member '\(member.name)' is cut short") }
        var b = ByteCursor(try FileRange.readBytes(file, at: position, count: 8, what: "torch tar member '\(member.name)'"))
        position += 8
        do { return try b.i64le() } catch { throw .notACheckpoint("torch tar member '\(member.name)' is cut short") }
    }

    mutating func skip(_ n: UInt64) { position += n }
}
