import Foundation

/// A DeepSpeed ZeRO checkpoint folder, read as the state dict DeepSpeed's own consolidation returns:
/// `get_fp32_state_dict_from_zero_checkpoint` of `deepspeed/utils/zero_to_fp32.py` (deepspeedai/DeepSpeed 0.19.8), the
/// script `engine.save_checkpoint` copies beside every checkpoint. The layout is in docs/formats-dcp-deepspeed.md §2.
///
/// The folder is the one holding `latest` (a text file naming the tag, read stripped as zero_to_fp32 reads it) or the
/// tag folder itself (`global_stepN/`). Its `*_model_states.pt` and `*_optim_states.pt` files, found and ordered as
/// zero_to_fp32's `get_checkpoint_files` finds them (`natural_keys` order), are opened as ordinary torch files:
/// their pickles are decoded, never run; DeepSpeed's own classes in them (`ZeroStageEnum`, `LossScaler`,
/// `fragment_address`) are read as data. Nothing is assembled in memory: each tensor of the result is a storage of a
/// ``GatheredSource`` that streams it from the files.
///
/// The state dict, in zero_to_fp32's order:
/// 1. the buffers (rank 0's `module[name]` for the names in `buffer_names`, in `module` order), as `.float()` of them
///    when they are floating point (converted while streaming), else as saved;
/// 2. the frozen parameters (stage 2 and 3 only: stage 1 does not save them): at stage 2 rank 0's
///    `frozen_param_fragments[name]` as saved, at stage 3 the ranks' fragments concatenated and cut to the shape;
/// 3. the trainable parameters in `param_shapes` order, from the fp32 master partitions in the optimizer files:
///    - stage 1 and 2 (`_zero2_merge_trainable_params`): per group, the ranks' `single_partition_of_fp32_groups[g]`
///      concatenated; each parameter `numel` elements at a running offset, which then also skips the parameter's
///      `param_alignment_paddings`;
///    - stage 3 (`_zero3_merge_trainable_params`): each rank's `fp32_flat_groups` seen as one vector; each parameter
///      `ceil(numel / world size)` elements at a running offset in every rank's vector, concatenated over the ranks
///      and cut to `numel`;
/// 4. the tied parameters of rank 0's `shared_params` (`alias: source`), the same tensor as their source (one storage
///    under two names, as the tool returns the same tensor object).
///
/// zero_to_fp32's checks are repeated (the file count against `partition_count`, the offsets against the partitions'
/// sizes), and a few it leaves to Python's errors are made explicit; a folder that fails one is refused with one line
/// naming the file.
enum DeepSpeedReader {
    /// The folder as a checkpoint, or nil when it is not a DeepSpeed checkpoint folder.
    static func open(folder: String, limits: PickleLimits) throws(CheckpointError) -> OpenedContainer? {
        guard let found = try find(folder) else { return nil }
        return try Reading.read(tagDir: found.tagDir, prefix: found.prefix, limits: limits)
    }

    /// How DeepSpeed reads the folder's pickles, for `scan`.
    static let torchLoads = "torch.load does not read a folder: DeepSpeed's load_checkpoint and zero_to_fp32 unpickle "
        + "each *_states.pt file with torch.load(weights_only=False), which runs what its pickle calls"

    /// The folder holding the ZeRO files: `folder` itself, or the first subfolder holding them (the tag beside
    /// `latest`); nil when there is none. For `scan`, which scans them even when the folder cannot be read.
    static func tagFolder(_ folder: String) -> String? {
        do { return try find(folder)?.tagDir } catch {
            // A folder the reader refuses (no `latest`, one naming nothing): its ZeRO files are still scanned.
            return subfolderHoldingStates(folder).map { folder + "/" + $0 }
        }
    }

    /// A folder DeepSpeed's reader refuses, in one line (`not a readable DeepSpeed ZeRO checkpoint: <file>: <why>`).
    static func bad(_ why: String) -> CheckpointError { .io("not a readable DeepSpeed ZeRO checkpoint: \(why)") }

    /// The files of ranks missing from `names` (`bf16_zero_pp_rank_1_mp_rank_00_optim_states.pt`): the ranks in
    /// `zero_pp_rank_<r>_` of the names present, the missing ones spelled like the first; empty when a name does not
    /// follow DeepSpeed's pattern (`_get_zero_ckpt_name`, `_get_ckpt_name` in runtime/engine.py).
    static func missingRankFiles(_ names: [String], worldSize: Int) -> [String] {
        let marker = "zero_pp_rank_"
        func rank(_ n: String) -> (head: Substring, rank: Int, tail: Substring)? {
            guard let m = n.range(of: marker) else { return nil }
            let digits = n[m.upperBound...].prefix { $0.isASCII && $0.isNumber }
            guard !digits.isEmpty, let r = Int(digits), n[digits.endIndex...].hasPrefix("_") else { return nil }
            return (n[..<m.upperBound], r, n[digits.endIndex...])
        }
        let parsed = names.compactMap(rank)
        guard parsed.count == names.count, let first = parsed.first else { return [] }
        let present = Set(parsed.map(\.rank))
        return (0..<worldSize).filter { !present.contains($0) }.map { "\(first.head)\($0)\(first.tail)" }
    }

    // MARK: - Finding the tag folder

    /// The tag folder and how file names are shown (`global_step2/` when the folder given is the one holding `latest`).
    ///
    /// A folder whose own entries include `*_model_states.pt` or `*_optim_states.pt` is a tag folder. A Hugging Face
    /// model or Trainer folder (it holds the weights `from_pretrained` loads) is left to ``InputPath``, even when it
    /// also holds DeepSpeed's `latest` and tag folder (the Trainer saves both). Otherwise `latest` names the tag.
    static func find(_ folder: String) throws(CheckpointError) -> (tagDir: String, prefix: String)? {
        if holdsStates(folder) { return (folder, "") }
        if InputPath.huggingFaceWeights.contains(where: { isRegularFile(folder + "/" + $0) }) { return nil }
        let latest = folder + "/latest"
        if isRegularFile(latest) {
            guard let tag = readTag(latest) else {
                if let sub = subfolderHoldingStates(folder) { throw bad("'latest' is not a short text file naming the tag (\(sub)/ holds ZeRO files)") }
                return nil
            }
            let tagDir = folder + "/" + tag
            let plain = !tag.isEmpty && !tag.contains("/") && tag != "." && tag != ".."
            if plain, isDirectory(tagDir) {
                if holdsStates(tagDir) { return (tagDir, tag + "/") }
                throw bad("'latest' names \(tag), which holds no *_model_states.pt or *_optim_states.pt")
            }
            guard subfolderHoldingStates(folder) != nil else { return nil }
            throw bad(plain ? "'latest' names \(tag), which is not a folder here" : "'latest' names '\(tag)', not a folder beside it")
        }
        if let sub = subfolderHoldingStates(folder) {
            throw bad("the folder has no 'latest' naming its tag (zero_to_fp32 needs one): open the tag folder itself, e.g. \(sub)/")
        }
        return nil
    }

    /// `open(latest).read().strip()`: the text, without the whitespace Python's `str.strip` removes; nil when the file
    /// is not short UTF-8 text.
    static func readTag(_ path: String) -> String? {
        guard let h = FileHandle(forReadingAtPath: path) else { return nil }
        defer { try? h.close() }
        guard let data = try? h.read(upToCount: 4097), data.count <= 4096,
              let text = String(data: data, encoding: .utf8) else { return nil }
        return pythonStrip(text)
    }

    /// Python's `str.strip()`: `str.isspace` characters are Unicode White_Space plus the separators U+001C–U+001F.
    static func pythonStrip(_ s: String) -> String {
        func space(_ u: Unicode.Scalar) -> Bool { u.properties.isWhitespace || (0x1C...0x1F).contains(u.value) }
        var scalars = Array(s.unicodeScalars)
        while let f = scalars.first, space(f) { scalars.removeFirst() }
        while let l = scalars.last, space(l) { scalars.removeLast() }
        var out = String.UnicodeScalarView()
        out.append(contentsOf: scalars)
        return String(out)
    }

    static func isRegularFile(_ path: String) -> Bool {
        var st = stat()
        return stat(path, &st) == 0 && (st.st_mode & S_IFMT) == S_IFREG
    }

    static func isDirectory(_ path: String) -> Bool {
        var st = stat()
        return stat(path, &st) == 0 && (st.st_mode & S_IFMT) == S_IFDIR
    }

    /// The entries `glob(os.path.join(dir, pattern))` lists for `*<suffix>`: not hidden (glob's `*` does not match a
    /// leading dot), ending with the suffix.
    static func globbed(_ dir: String, suffix: String) -> [String] {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? []
        return names.filter { !$0.hasPrefix(".") && $0.hasSuffix(suffix) }
    }

    static func holdsStates(_ dir: String) -> Bool {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? []
        return names.contains { !$0.hasPrefix(".") && ($0.hasSuffix("_model_states.pt") || $0.hasSuffix("_optim_states.pt")) }
    }

    /// The first (by name) subfolder holding ZeRO files.
    static func subfolderHoldingStates(_ dir: String) -> String? {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? []
        return names.sorted().first { !$0.hasPrefix(".") && isDirectory(dir + "/" + $0) && holdsStates(dir + "/" + $0) }
    }

    // MARK: - natural_keys

    /// zero_to_fp32's `natural_keys(text)`: `re.split(r'(\d+)', text)` with the digit runs as ints, compared as Python
    /// compares the lists (text parts by code point, digit runs by value). Text and digit runs alternate from a text
    /// part, so a text is only ever compared with a text. Equal keys (names differing only in leading zeros) keep
    /// code-point order, where Python keeps the directory's order.
    static func naturalLess(_ a: String, _ b: String) -> Bool {
        let ka = naturalKey(a), kb = naturalKey(b)
        for (x, y) in zip(ka, kb) {
            switch (x, y) {
            case (.text(let s), .text(let t)):
                if s != t { return s.unicodeScalars.lexicographicallyPrecedes(t.unicodeScalars) }
            case (.number(let m), .number(let n)):
                if m != n {
                    return m.count != n.count ? m.count < n.count : m.lexicographicallyPrecedes(n)
                }
            default:
                break  // cannot happen: both alternate from a text part
            }
        }
        if ka.count != kb.count { return ka.count < kb.count }
        return a.unicodeScalars.lexicographicallyPrecedes(b.unicodeScalars)
    }

    enum NaturalPart: Equatable {
        case text(String)
        /// The digits' values without leading zeros (`int(text)` of a `\d+` run: any Unicode decimal digit).
        case number([UInt32])
    }

    static func naturalKey(_ s: String) -> [NaturalPart] {
        var parts: [NaturalPart] = []
        var text = String.UnicodeScalarView()
        var digits: [UInt32] = []
        var inDigits = false
        func flushNumber() {
            var d = digits[...]
            while d.first == 0 { d = d.dropFirst() }
            parts.append(.number(Array(d)))
            digits = []
        }
        for u in s.unicodeScalars {
            let isDigit = u.properties.numericType == .decimal
            if isDigit {
                if !inDigits {
                    parts.append(.text(String(text)))
                    text = String.UnicodeScalarView()
                    inDigits = true
                }
                digits.append(UInt32(u.properties.numericValue ?? 0))
            } else {
                if inDigits {
                    flushNumber()
                    inDigits = false
                }
                text.append(u)
            }
        }
        if inDigits { flushNumber(); parts.append(.text("")) } else { parts.append(.text(String(text))) }
        return parts
    }

    // MARK: - Layout arithmetic (pure, unit-tested)

    /// A part of a range of a concatenation: `count` elements from element `offset` of part `part`.
    struct Piece: Equatable {
        var part: Int
        var offset: Int64
        var count: Int64
    }

    /// The pieces of elements `start ..< start + count` of the concatenation of parts of these sizes; nil when the
    /// range reaches past the end.
    static func pieces(_ start: Int64, _ count: Int64, in sizes: [Int64]) -> [Piece]? {
        guard start >= 0, count >= 0 else { return nil }
        var out: [Piece] = []
        var at = start, left = count, base: Int64 = 0
        for (i, size) in sizes.enumerated() where left > 0 {
            defer { base += size }
            guard at < base + size else { continue }
            let n = min(left, base + size - at)
            out.append(Piece(part: i, offset: at - base, count: n))
            at += n
            left -= n
        }
        return left == 0 ? out : nil
    }

    /// Stage 1/2 (`_zero2_merge_trainable_params`, one group): each parameter's offset in the group's concatenated
    /// partitions, the running offset moving by its numel and its alignment padding; then zero_to_fp32's sanity
    /// check, `zero2_align(offset) == zero2_align(available)` with `zero2_align(x) = ceil(x / 2ws) · 2ws`.
    /// - Throws: a reason, when a parameter reaches past the partitions or the check fails.
    static func zero2Offsets(numels: [Int64], paddings: [Int64]?, available: Int64, worldSize: Int,
                             names: [String] = []) throws(LayoutError) -> [Int64] {
        var offsets: [Int64] = []
        var offset: Int64 = 0
        for (i, n) in numels.enumerated() {
            let (end, o) = offset.addingReportingOverflow(n)
            guard !o, end <= available else {
                let what = i < names.count ? "'\(names[i])'" : "parameter \(i)"
                throw LayoutError("\(what) needs elements \(offset)..<\(o ? Int64.max : end), the partitions hold \(available)")
            }
            offsets.append(offset)
            offset = end
            if let p = paddings {
                let (e, o2) = offset.addingReportingOverflow(p[i])
                guard !o2 else { throw LayoutError("alignment padding \(p[i]) overflows") }
                offset = e
            }
        }
        let align = Int64(2 * worldSize)
        func aligned(_ x: Int64) -> Int64 { (x + align - 1) / align * align }  // x >= 0, far from Int64.max here
        guard offset <= available + align, aligned(offset) == aligned(available) else {
            throw LayoutError("consumed \(offset) numels out of \(available) - something is wrong")
        }
        // Files that list their alignment paddings save each partition cut by its group padding (stage_1_and_2.py
        // `_get_groups_without_padding`), so their elements are exactly the parameters and those paddings: any
        // element left over means param_shapes do not describe these partitions (zero_to_fp32 lets up to 2·ws pass).
        if paddings != nil, offset != available {
            throw LayoutError("param_shapes account for \(offset) of the partitions' \(available) elements")
        }
        return offsets
    }

    /// Stage 3 (`_zero3_merge_trainable_params`): each parameter's offset in every rank's flat vector, moving by
    /// `ceil(numel / ws)`; then zero_to_fp32's sanity check, the offsets adding up to a rank's elements.
    static func zero3Offsets(numels: [Int64], worldSize: Int, rankElements: Int64) throws(LayoutError) -> [Int64] {
        var offsets: [Int64] = []
        var offset: Int64 = 0
        let ws = Int64(worldSize)
        for n in numels {
            offsets.append(offset)
            let (o, overflow) = offset.addingReportingOverflow(n / ws + (n % ws == 0 ? 0 : 1))
            guard !overflow else { throw LayoutError("offsets overflow") }
            offset = o
        }
        guard offset == rankElements else {
            let (a, o1) = offset.multipliedReportingOverflow(by: ws), (b, o2) = rankElements.multipliedReportingOverflow(by: ws)
            throw LayoutError("consumed \(o1 ? "more than \(Int64.max)" : String(a)) numels out of \(o2 ? "more than \(Int64.max)" : String(b)) - something is wrong")
        }
        return offsets
    }

    /// `ceil(numel / world size)`: a stage 3 parameter's elements on each rank (`zero3_partitioned_param_info`).
    static func partitioned(_ numel: Int64, _ worldSize: Int) -> Int64 {
        let ws = Int64(worldSize)
        return numel / ws + (numel % ws == 0 ? 0 : 1)
    }

    struct LayoutError: Error, CustomStringConvertible {
        var description: String
        init(_ d: String) { description = d }
    }
}

// MARK: - Reading a tag folder

extension DeepSpeedReader {
    /// A tensor of one of the opened files, with where its storage's bytes are.
    struct FileTensor {
        var file: Int
        var ref: TensorRef
        /// The storage record's first byte in the file and its size.
        var recordStart: UInt64
        var recordBytes: UInt64
        /// The record's CRC-32 as the zip declares it, and its index in ``Reading/records``, when it declares one.
        var checksum: UInt32?
        var record: Int?

        var base: UInt64 { recordStart + UInt64(ref.storageOffset) * UInt64(ref.dtype.itemSize) }
        var numel: Int64 { ref.numel ?? 0 }
        /// Whether the tensor is 1-D and contiguous (what zero_to_fp32 concatenates and slices).
        var isFlat: Bool { ref.shape.count == 1 && (ref.stride == [1] || ref.shape[0] <= 1) }

        /// The byte run of elements `offset ..< offset + count` of a flat tensor.
        func run(_ offset: Int64, _ count: Int64) -> ByteRun {
            let item = UInt64(ref.dtype.itemSize)
            return ByteRun(file: file, offset: base + UInt64(offset) * item, count: UInt64(count) * item, record: record)
        }

        /// The whole tensor as one chunk box (any strides), as `.contiguous()` of it reads it.
        func box(label: String) -> GatheredChunk {
            GatheredChunk(offsets: ref.shape.map { _ in 0 }, sizes: ref.shape,
                          location: ChunkLocation(file: file, base: base, strides: ref.stride,
                                                  extent: recordStart..<(recordStart + recordBytes), label: label,
                                                  checksum: checksum))
        }
    }

    /// One output entry: a gathered tensor, or (tied parameters) the same tensor as an earlier entry.
    struct Output {
        var tensor: GatheredTensor
        /// How many files' pieces the tensor is read from.
        var pieces: Int
    }

    /// An opened `.pt` file.
    struct Opened {
        var name: String
        var checkpoint: Checkpoint
        var graph: PickleGraph { checkpoint.graph }
    }

    final class Reading {
        let prefix: String
        let limits: PickleLimits
        var opened: [Opened] = []
        /// The tensors located so far, by file and node.
        var located: [Int: [NodeID: FileTensor]] = [:]
        /// The storage records runs are cut from, checked whole before they are read (by file and first byte).
        var records: [CheckedRecord] = []
        private var recordIndex: [[UInt64]: Int] = [:]

        init(prefix: String, limits: PickleLimits) {
            self.prefix = prefix
            self.limits = limits
        }

        static func read(tagDir: String, prefix: String, limits: PickleLimits) throws(CheckpointError) -> OpenedContainer {
            let r = Reading(prefix: prefix, limits: limits)
            return try r.read(tagDir)
        }

        func bad(_ why: String) -> CheckpointError { DeepSpeedReader.bad(why) }
        func badFile(_ f: Int, _ why: String) -> CheckpointError { DeepSpeedReader.bad("\(opened[f].name): \(why)") }

        /// `get_checkpoint_files(dir, pattern)`: the files, natural order; refused when there are none or one is not a
        /// regular file.
        func files(_ dir: String, _ suffix: String) throws(CheckpointError) -> [String] {
            let names = DeepSpeedReader.globbed(dir, suffix: suffix).sorted(by: DeepSpeedReader.naturalLess)
            guard !names.isEmpty else { throw bad("no *\(suffix) file in \(prefix.isEmpty ? "the folder" : prefix)") }
            for n in names where !DeepSpeedReader.isRegularFile(dir + "/" + n) {
                throw bad("\(prefix)\(n) is not a file")
            }
            return names
        }

        func open(_ dir: String, _ name: String) throws(CheckpointError) -> Int {
            let path = dir + "/" + name
            let c: Checkpoint
            do { c = try Checkpoint(path: path, limits: limits, part: true) } catch {
                throw .io("\(prefix)\(name): \(error.description)")
            }
            guard case .torchZip = c.containerFormat else {
                throw bad("\(prefix)\(name) is \(c.containerFormat), not a torch zip file")
            }
            opened.append(Opened(name: prefix + name, checkpoint: c))
            return opened.count - 1
        }

        func read(_ dir: String) throws(CheckpointError) -> OpenedContainer {
            // parse_model_states, then parse_optim_states (_get_fp32_state_dict_from_zero_checkpoint).
            let modelNames = try files(dir, "_model_states.pt")
            if DeepSpeedReader.globbed(dir, suffix: "_optim_states.pt").isEmpty, let first = modelNames.first {
                // Stage 0 (plain data parallel) saves no partitions; zero_to_fp32 fails on it. Its weights are whole.
                throw bad("no *_optim_states.pt file in \(prefix.isEmpty ? "the folder" : prefix): no ZeRO partitions to "
                          + "merge (a stage 0 checkpoint, or its optimizer files are missing); the record `module` of "
                          + "\(prefix)\(first) holds the weights as saved: pass that file")
            }
            let optimNames = try files(dir, "_optim_states.pt")
            // The optimizer files first (the stage decides what the model files must hold), each closed once read.
            let optim = try OptimStates(dir: dir, names: optimNames, self)
            let stage = optim.stage, ws = optim.worldSize
            if stage <= 2, modelNames.count > 1 {
                throw bad("\(modelNames.count) *_model_states.pt files at stage \(stage) (model parallelism?): "
                          + "zero_to_fp32 reads only \(prefix)\(modelNames[0]); ckpt does not read this layout")
            }
            if stage == 3, modelNames.count != ws {
                let missing = ws > modelNames.count ? DeepSpeedReader.missingRankFiles(modelNames, worldSize: ws) : []
                throw .io((missing.isEmpty ? "" : "\(prefix)\(missing[0]) is missing: ")
                          + "expected \(ws) *_model_states.pt files at stage 3 (one per rank) but found \(modelNames.count)")
            }
            var models: [ModelState] = []
            for n in modelNames {
                let f = try open(dir, n)
                let m = try ModelState(file: f, self)
                // Locate what the state dict reads from this file: rank 0's buffers and frozen fragments, and at
                // stage 3 every rank's frozen fragments.
                if models.isEmpty {
                    for (k, id) in m.module where m.bufferNames.contains(k) { _ = try requireTensor(f, id, what: "module['\(k)']") }
                }
                if let names = (models.first ?? m).frozenShapes?.map(\.name), models.isEmpty || stage == 3 {
                    for name in names {
                        guard let id = m.frozenFragments?[name] else { throw badFile(f, "frozen_param_fragments has no '\(name)'") }
                        _ = try requireTensor(f, id, what: "frozen_param_fragments['\(name)']")
                    }
                }
                close(f)
                models.append(m)
            }
            let paths = opened.map { dir + "/" + ($0.name.dropFirst(prefix.count)) }
            var assembly = Assembly(models: models, optim: optim, reading: self)
            let assembled = try assembly.build()
            let gfiles = try GatheredFiles(paths: paths)
            for t in assembled.tensors { try t.checkCoverage() }
            let source = GatheredSource(tensors: assembled.tensors, files: gfiles, records: records)

            // The graph: the unique tensors by their first name, then every entry (aliases share the tensor node).
            var sg = StateDictGraph()
            for (i, t) in assembled.tensors.enumerated() {
                sg.append(name: t.name, dtype: t.dtype, shape: t.shape, storageKey: String(i))
            }
            var graph = sg.finished()
            guard case .object(var od) = graph[graph.root] else { throw bad("internal: no state dict") }
            let nodes = od.dictItems.map(\.value)
            od.dictItems = assembled.entries.map { DictEntry(key: graph.add(.string($0.name)), value: nodes[$0.tensor]) }
            graph[graph.root] = .object(od)

            let layout = try self.layout(models: models, optim: optim, assembled: assembled)
            let checkpoints = opened
            let scans = {
                checkpoints.flatMap { o in
                    o.checkpoint.pickleScans.map { s in var s = s; s.label = "\(o.name): \(s.label)"; return s }
                }
            }
            return OpenedContainer(graph: graph, source: source, format: .distributed(layout.format),
                                   fileSize: gfiles.sizes.reduce(0, +), recordCount: assembled.tensors.count,
                                   metadata: [], scanPickles: scans, distributed: layout)
        }

        /// A tensor of a file, located.
        func fileTensor(_ f: Int, _ t: TensorRef, what: String) throws(CheckpointError) -> FileTensor {
            let c = opened[f].checkpoint
            guard let h = c.zipRecord(forStorage: t.storage.key) else { throw badFile(f, "\(what): storage \(t.storage.key) has no record") }
            let start: UInt64?
            do { start = try h.reader.dataOffset(of: h.entry) } catch { throw .io("\(opened[f].name): \(error.description)") }
            guard let start else { throw badFile(f, "\(what): its storage record is compressed (torch.save stores records)") }
            do { try t.check(name: what, recordBytes: Int64(h.entry.size)) } catch { throw badFile(f, error.description) }
            var record: Int? = nil
            if h.entry.hasChecksum {
                let key = [UInt64(f), start]
                record = recordIndex[key]
                if record == nil {
                    record = records.count
                    recordIndex[key] = records.count
                    records.append(CheckedRecord(file: f, range: start..<(start + h.entry.size), crc: h.entry.crc32,
                                                 label: "\(opened[f].name), record '\(h.entry.name)'"))
                }
            }
            return FileTensor(file: f, ref: t, recordStart: start, recordBytes: h.entry.size,
                              checksum: h.entry.hasChecksum ? h.entry.crc32 : nil, record: record)
        }

        /// A tensor node, or `_rebuild_from_type_v2(_rebuild_tensor_v2, torch.Tensor, args, state)` (how stage 3 pickles
        /// its `fp32_flat_groups`: `Tensor.__reduce_ex__` of a tensor with Python attributes): what `func(*args)` builds;
        /// the state only sets attributes. Nil when the node is neither.
        func tensorRef(_ f: Int, _ id: NodeID, what: String) throws(CheckpointError) -> TensorRef? {
            let g = opened[f].graph
            do {
                if let t = try g.tensor(id) { return t }
            } catch {
                throw badFile(f, "\(what): \(error.reason)")
            }
            guard g.objectCallable(id) == "torch._tensor._rebuild_from_type_v2", case .object(let o) = g[id],
                  let args = g.sequence(o.args), args.count == 4 else { return nil }
            guard g.globalName(args[0]) == "torch._utils._rebuild_tensor_v2" else {
                throw badFile(f, "\(what) is rebuilt by \(g.globalName(args[0]) ?? "a computed function"), not torch._utils._rebuild_tensor_v2")
            }
            guard ["torch.Tensor", "torch.nn.parameter.Parameter"].contains(g.globalName(args[1]) ?? "") else {
                throw badFile(f, "\(what) is a tensor of class \(g.globalName(args[1]) ?? "?"), which ckpt does not read")
            }
            var copy = g
            let node = copy.add(.object(PickleObject(construction: .reduce, callable: args[0], args: args[2])))
            do {
                guard let t = try copy.tensor(node) else { return nil }
                return t
            } catch {
                throw badFile(f, "\(what): \(error.reason)")
            }
        }

        /// A located tensor at `id`, refused when it is none.
        func requireTensor(_ f: Int, _ id: NodeID, what: String) throws(CheckpointError) -> FileTensor {
            if let t = located[f]?[id] { return t }
            guard let t = try tensorRef(f, id, what: what) else { throw badFile(f, "\(what) is not a tensor") }
            let ft = try fileTensor(f, t, what: what)
            located[f, default: [:]][id] = ft
            return ft
        }

        /// Closes a file's zip once every tensor read from it is located (``located``): the data is read through
        /// ``GatheredFiles``, which keeps few files open, so a folder of thousands of ranks does not hold thousands
        /// of descriptors. Its pickles stay for `scan`.
        func close(_ f: Int) {
            (opened[f].checkpoint.source as? ZipStorageSource)?.zip.close()
        }
    }
}

// MARK: - Pickle values

extension DeepSpeedReader {
    /// Reading plain values of one file's pickle.
    struct Values {
        let g: PickleGraph

        func dict(_ id: NodeID) -> [(key: String, value: NodeID)]? {
            guard let entries = g.dictEntries(id) else { return nil }
            var out: [(key: String, value: NodeID)] = []
            for e in entries {
                guard let k = g.string(e.key) else { return nil }
                out.append((k, e.value))
            }
            return out
        }

        func int(_ id: NodeID) -> Int64? {
            if case .int(let v) = g[id] { return v }
            return nil
        }

        func ints(_ id: NodeID) -> [Int64]? {
            guard let items = g.sequence(id) else { return nil }
            let v = items.compactMap(int)
            return v.count == items.count ? v : nil
        }

        /// A shape: `torch.Size((..))` (REDUCE), or a tuple or list of ints (zero_to_fp32 takes `math.prod` of one).
        func shape(_ id: NodeID) -> [Int64]? {
            if let v = ints(id) { return v }
            guard g.objectCallable(id) == "torch.Size", case .object(let o) = g[id], o.state == nil,
                  let args = g.sequence(o.args), args.count <= 1 else { return nil }
            return args.isEmpty ? [] : ints(args[0])
        }

        /// `zero_stage`: an int, or `ZeroStageEnum(n)` (an `int, Enum` pickled as its class called with its value).
        func stage(_ id: NodeID) -> Int64? {
            if let v = int(id) { return v }
            guard g.objectCallable(id) == "deepspeed.runtime.zero.config.ZeroStageEnum", case .object(let o) = g[id],
                  o.state == nil, let args = g.sequence(o.args), args.count == 1 else { return nil }
            return int(args[0])
        }

        /// A short Python-like rendering of a plain value for `info`: `2`, `'0.19.8'`, `None`, `{'pp_degree': 1}`.
        func render(_ id: NodeID, depth: Int = 0) -> String {
            guard depth < 6 else { return "..." }
            switch g[id] {
            case .none: return "None"
            case .bool(let b): return b ? "True" : "False"
            case .int(let v): return String(v)
            case .bigInt(let b): return BigInt.decimal(littleEndian: b)
            case .float(let d): return "\(d)"
            case .string(let s): return "'" + s + "'"
            case .bytes(let b): return "<\(b.count) bytes>"
            case .tuple(let items):
                return "(" + items.map { render($0, depth: depth + 1) }.joined(separator: ", ") + (items.count == 1 ? ",)" : ")")
            case .list(let items): return "[" + items.map { render($0, depth: depth + 1) }.joined(separator: ", ") + "]"
            default: break
            }
            if let s = stage(id) { return String(s) }
            if let sh = shape(id), g.objectCallable(id) == "torch.Size" { return "torch.Size([" + sh.map(String.init).joined(separator: ", ") + "])" }
            if let entries = g.dictEntries(id) {
                return "{" + entries.map { render($0.key, depth: depth + 1) + ": " + render($0.value, depth: depth + 1) }
                    .joined(separator: ", ") + "}"
            }
            if let t = (try? g.tensor(id)) ?? nil { return "tensor \(t.dtype.rawValue) \(t.shape)" }
            if let c = g.objectCallable(id) { return "<\(c)>" }
            return "..."
        }
    }
}

// MARK: - Model and optimizer states

extension DeepSpeedReader {
    /// What `parse_model_states` takes from one `*_model_states.pt`.
    struct ModelState {
        var file: Int
        /// `module` entries.
        var module: [(key: String, value: NodeID)]
        var bufferNames: Set<String>
        /// `param_shapes`: per group, (name, shape).
        var paramShapes: [[(name: String, shape: [Int64])]]
        var frozenShapes: [(name: String, shape: [Int64])]?
        var frozenFragments: [String: NodeID]?
        var shared: [(alias: String, source: String)]
        var top: [(key: String, value: NodeID)]

        init(file f: Int, _ r: Reading) throws(CheckpointError) {
            file = f
            let g = r.opened[f].graph
            let v = Values(g: g)
            func bad(_ why: String) -> CheckpointError { r.badFile(f, why) }
            guard let top = v.dict(g.root) else { throw bad("its top level is not a dict with str keys") }
            self.top = top
            func item(_ k: String) -> NodeID? { top.first { $0.key == k }?.value }
            for k in ["ds_autoep_layers", "autoep_layers"] where item(k).map({ !g.isNone($0) }) == true {
                // _raise_if_autoep_zero3_partitioned_state: zero_to_fp32 refuses AutoEP's partition-native layout.
                throw bad("it holds '\(k)' (AutoEP expert layers), which zero_to_fp32 and ckpt do not consolidate")
            }
            guard let bn = item("buffer_names") else { throw bad("it is not a model state checkpoint (no buffer_names)") }
            let names = g.sequence(bn) ?? []
            let strings = names.compactMap { g.string($0) }
            guard g.sequence(bn) != nil, strings.count == names.count else { throw bad("buffer_names is not a list of names") }
            bufferNames = Set(strings)
            guard let m = item("module"), let module = v.dict(m) else { throw bad("its 'module' is not a dict with str keys") }
            self.module = module
            guard let ps = item("param_shapes"), let groups = g.sequence(ps) else { throw bad("param_shapes is not a list") }
            func shapes(_ id: NodeID, _ what: String) throws(CheckpointError) -> [(name: String, shape: [Int64])] {
                guard let d = v.dict(id) else { throw bad("\(what) is not a dict of names") }
                var out: [(name: String, shape: [Int64])] = []
                for (k, s) in d {
                    guard let shape = v.shape(s) else { throw bad("\(what)['\(k)'] is not a shape") }
                    guard shape.allSatisfy({ $0 >= 0 }), shape.reduce(Int64(1), { $0.multipliedReportingOverflow(by: $1).overflow ? -1 : $0 * $1 }) >= 0 else {
                        throw bad("\(what)['\(k)'] is the impossible shape \(shape)")
                    }
                    out.append((k, shape))
                }
                return out
            }
            var groupShapes: [[(name: String, shape: [Int64])]] = []
            for (i, grp) in groups.enumerated() { groupShapes.append(try shapes(grp, "param_shapes[\(i)]")) }
            paramShapes = groupShapes
            if let fs = item("frozen_param_shapes"), !g.isNone(fs) {
                frozenShapes = try shapes(fs, "frozen_param_shapes")
            } else {
                frozenShapes = nil
            }
            if let ff = item("frozen_param_fragments"), !g.isNone(ff) {
                guard let d = v.dict(ff) else { throw bad("frozen_param_fragments is not a dict of names") }
                frozenFragments = Dictionary(d.map { ($0.key, $0.value) }, uniquingKeysWith: { _, b in b })
            } else {
                frozenFragments = nil
            }
            guard let sp = item("shared_params"), let pairs = v.dict(sp) else { throw bad("shared_params is not a dict of names") }
            var shared: [(alias: String, source: String)] = []
            for (alias, src) in pairs {
                guard let s = g.string(src) else { throw bad("shared_params['\(alias)'] is not a name") }
                shared.append((alias, s))
            }
            self.shared = shared
        }
    }

    /// What `parse_optim_states` takes from the `*_optim_states.pt` files: rank 0's stage, world size and alignment
    /// paddings, every rank's fp32 groups.
    struct OptimStates {
        var files: [Int]
        var stage: Int
        var worldSize: Int
        /// Per rank, the fp32 groups (`single_partition_of_fp32_groups`, stage 1/2; `fp32_flat_groups`, stage 3).
        var groups: [[FileTensor]]
        var alignmentPaddings: [[Int64]]?
        var stageNode: NodeID
        var partitionCountNode: NodeID

        /// Opens the files one after another, each closed once its groups are located.
        init(dir: String, names: [String], _ r: Reading) throws(CheckpointError) {
            let first = try r.open(dir, names[0])
            var files = [first]
            func osd(_ f: Int) throws(CheckpointError) -> NodeID {
                let g = r.opened[f].graph
                guard let o = g.lookup(g.root, "optimizer_state_dict"), g.dictEntries(o) != nil else {
                    throw r.badFile(f, "it has no optimizer_state_dict")
                }
                return o
            }
            let g0 = r.opened[first].graph, v0 = Values(g: g0)
            let o0 = try osd(first)
            guard let st = g0.lookup(o0, "zero_stage") else { throw r.badFile(first, "it is not a zero checkpoint (no zero_stage)") }
            guard let s = v0.stage(st) else { throw r.badFile(first, "zero_stage is \(v0.render(st)), not a stage number") }
            guard (0...3).contains(s) else { throw r.badFile(first, "unknown zero stage \(s)") }
            stage = Int(s)
            stageNode = st
            guard let pc = g0.lookup(o0, "partition_count") else { throw r.badFile(first, "it has no partition_count") }
            partitionCountNode = pc
            // ZeRO-2 keeps a partition count per group (expert groups may differ); zero_to_fp32 takes the largest.
            let counts = v0.int(pc).map { [$0] } ?? v0.ints(pc)
            guard let ws = counts?.max(), ws > 0, ws <= 1 << 24 else {
                throw r.badFile(first, "partition_count is \(v0.render(pc)), not a world size")
            }
            // Groups partitioned over fewer ranks (expert parallelism) would be joined from every rank's file all the
            // same by zero_to_fp32: not a layout ckpt guesses at.
            guard counts!.allSatisfy({ $0 == ws }) else {
                throw r.badFile(first, "partition_count is \(v0.render(pc)): groups partitioned over different numbers of "
                                + "ranks (expert parallelism?), which ckpt does not read")
            }
            guard ws == names.count else {
                let missing = ws > names.count ? DeepSpeedReader.missingRankFiles(names, worldSize: Int(ws)) : []
                throw .io((missing.isEmpty ? "" : "\(r.prefix)\(missing[0]) is missing: ")
                          + "expected \(ws) *_optim_states.pt files (partition_count) but found \(names.count): "
                          + "a checkpoint overwritten, or not saved by every process")
            }
            worldSize = Int(ws)
            let key = stage <= 2 ? "single_partition_of_fp32_groups" : "fp32_flat_groups"
            var groups: [[FileTensor]] = []
            for i in names.indices {
                let f = i == 0 ? first : try r.open(dir, names[i])
                if i > 0 { files.append(f) }
                defer { r.close(f) }
                let g = r.opened[f].graph
                let o = try osd(f)
                guard let list = g.lookup(o, key), let items = g.sequence(list) else { throw r.badFile(f, "it has no \(key) list") }
                var ts: [FileTensor] = []
                for (i, item) in items.enumerated() {
                    let t = try r.requireTensor(f, item, what: "\(key)[\(i)]")
                    guard t.isFlat else { throw r.badFile(f, "\(key)[\(i)] is not a flat contiguous tensor (shape \(t.ref.shape), strides \(t.ref.stride))") }
                    ts.append(t)
                }
                groups.append(ts)
            }
            self.files = files
            self.groups = groups
            if let p = g0.lookup(o0, "param_alignment_paddings"), !g0.isNone(p) {
                guard let lists = g0.sequence(p) else { throw r.badFile(first, "param_alignment_paddings is not a list") }
                var out: [[Int64]] = []
                for l in lists {
                    guard let v = v0.ints(l), v.allSatisfy({ $0 >= 0 }) else {
                        throw r.badFile(first, "param_alignment_paddings holds \(v0.render(l)), not counts")
                    }
                    out.append(v)
                }
                alignmentPaddings = out
            } else {
                alignmentPaddings = nil
            }
        }
    }
}

// MARK: - The state dict

extension DeepSpeedReader {
    struct Assembled {
        var tensors: [GatheredTensor]
        /// Pieces per tensor.
        var pieces: [Int]
        /// The state dict's entries in order: name and tensor index.
        var entries: [(name: String, tensor: Int)]
        /// `module` entries left out (stage 1's frozen parameters).
        var leftOut: [String]
    }

    /// Builds the ordered dict `_get_fp32_state_dict_from_zero{2,3}_checkpoint` returns.
    struct Assembly {
        let models: [ModelState]
        let optim: OptimStates
        let reading: Reading

        /// Entries by name: assignment to an existing name keeps its place (a Python dict).
        var tensors: [GatheredTensor] = []
        var pieces: [Int] = []
        var order: [String] = []
        var value: [String: Int] = [:]

        init(models: [ModelState], optim: OptimStates, reading: Reading) {
            self.models = models
            self.optim = optim
            self.reading = reading
        }

        mutating func set(_ name: String, _ t: Int) {
            if value[name] == nil { order.append(name) }
            value[name] = t
        }

        mutating func add(_ name: String, _ t: GatheredTensor, pieces n: Int) {
            tensors.append(t)
            pieces.append(n)
            set(name, tensors.count - 1)
        }

        func bad(_ f: Int, _ why: String) -> CheckpointError { reading.badFile(f, why) }

        mutating func build() throws(CheckpointError) -> Assembled {
            let m0 = models[0]
            let stage = optim.stage
            let f0 = m0.file

            // 1. Buffers, in module order, `.float()` when floating.
            for (k, id) in m0.module where m0.bufferNames.contains(k) {
                let t = try reading.requireTensor(f0, id, what: "module['\(k)']")
                let src = t.ref.dtype
                var dtype = src
                if src.isFloatingPoint {
                    guard DTypeConverter.floating.contains(src) else {
                        throw bad(f0, "buffer '\(k)' is \(src.rawValue): ckpt cannot convert it to float32 as .float() does")
                    }
                    dtype = .float32
                }
                add(k, GatheredTensor(name: k, dtype: dtype, sourceDType: src, shape: t.ref.shape,
                                      layout: .boxes([t.box(label: "\(reading.opened[f0].name), buffer '\(k)'")])), pieces: 1)
            }

            // 2. Frozen parameters (stage >= 2 saves them).
            if let shapes = m0.frozenShapes, !shapes.isEmpty {
                for (name, shape) in shapes {
                    if stage <= 2 {
                        // _zero2_merge_frozen_params: rank 0's fragment, the tensor as saved.
                        guard let id = m0.frozenFragments?[name] else { throw bad(f0, "frozen_param_fragments has no '\(name)'") }
                        let t = try reading.requireTensor(f0, id, what: "frozen_param_fragments['\(name)']")
                        add(name, GatheredTensor(name: name, dtype: t.ref.dtype, shape: t.ref.shape,
                                                 layout: .boxes([t.box(label: "\(reading.opened[f0].name), frozen '\(name)'")])), pieces: 1)
                    } else {
                        // _zero3_merge_frozen_params: cat(every rank's fragment)[:numel].view(shape).
                        var frags: [FileTensor] = []
                        for m in models {
                            guard let id = m.frozenFragments?[name] else { throw bad(m.file, "frozen_param_fragments has no '\(name)'") }
                            let t = try reading.requireTensor(m.file, id, what: "frozen_param_fragments['\(name)']")
                            guard t.isFlat else { throw bad(m.file, "frozen_param_fragments['\(name)'] is not a flat contiguous tensor") }
                            guard t.ref.dtype == frags.first?.ref.dtype ?? t.ref.dtype else {
                                throw bad(m.file, "frozen_param_fragments['\(name)'] is \(t.ref.dtype.rawValue), rank 0's \(frags[0].ref.dtype.rawValue)")
                            }
                            frags.append(t)
                        }
                        let numel = shape.reduce(1, *)
                        guard let ps = DeepSpeedReader.pieces(0, numel, in: frags.map(\.numel)) else {
                            throw reading.bad("frozen parameter '\(name)' \(shape) needs \(numel) elements, its fragments hold \(frags.map(\.numel).reduce(0, +))")
                        }
                        add(name, GatheredTensor(name: name, dtype: frags[0].ref.dtype, shape: shape,
                                                 layout: .runs(ps.map { frags[$0.part].run($0.offset, $0.count) })),
                            pieces: Set(ps.map(\.part)).count)
                    }
                }
            }

            // 3. Trainable parameters.
            if stage <= 2 { try zero2Trainable() } else { try zero3Trainable() }

            // 4. Tied parameters: `state_dict[alias] = state_dict[source]` when the source is there.
            for (alias, src) in m0.shared {
                if let t = value[src] { set(alias, t) }
            }

            // The unique tensors in order of first appearance.
            var renumber: [Int: Int] = [:]
            var outTensors: [GatheredTensor] = [], outPieces: [Int] = []
            var entries: [(name: String, tensor: Int)] = []
            for name in order {
                let t = value[name]!
                if renumber[t] == nil {
                    renumber[t] = outTensors.count
                    var g = tensors[t]
                    g.name = name
                    outTensors.append(g)
                    outPieces.append(pieces[t])
                }
                entries.append((name, renumber[t]!))
            }
            let listed = Set(order)
            let leftOut = m0.module.map(\.key).filter { !listed.contains($0) }
            return Assembled(tensors: outTensors, pieces: outPieces, entries: entries, leftOut: leftOut)
        }

        /// `_zero2_merge_trainable_params`.
        mutating func zero2Trainable() throws(CheckpointError) {
            let shapes = models[0].paramShapes
            let groups = optim.groups
            let ws = optim.worldSize
            let nGroups = groups[0].count
            for (r, g) in groups.enumerated() where g.count != nGroups {
                throw bad(optim.files[r], "it has \(g.count) fp32 groups, rank 0 has \(nGroups)")
            }
            guard shapes.count == nGroups else {
                throw bad(models[0].file, "param_shapes has \(shapes.count) groups, the optimizer files \(nGroups)")
            }
            if let p = optim.alignmentPaddings, p.count != nGroups {
                throw bad(optim.files[0], "param_alignment_paddings has \(p.count) groups, not \(nGroups)")
            }
            for gi in 0..<nGroups {
                let parts = groups.map { $0[gi] }
                for (r, p) in parts.enumerated() where p.ref.dtype != parts[0].ref.dtype {
                    throw bad(optim.files[r], "fp32 group \(gi) is \(p.ref.dtype.rawValue), rank 0's \(parts[0].ref.dtype.rawValue)")
                }
                let sizes = parts.map(\.numel)
                let available = sizes.reduce(0, +)
                let paddings = optim.alignmentPaddings?[gi]
                if let p = paddings, p.count != shapes[gi].count {
                    throw bad(optim.files[0], "expected \(shapes[gi].count) parameter alignment paddings for group \(gi), but found \(p.count)")
                }
                let numels = shapes[gi].map { $0.shape.reduce(1, *) }
                let offsets: [Int64]
                do {
                    offsets = try DeepSpeedReader.zero2Offsets(numels: numels, paddings: paddings, available: available,
                                                               worldSize: ws, names: shapes[gi].map(\.name))
                } catch {
                    throw bad(models[0].file, "param_shapes[\(gi)] does not fit the ranks' fp32 partitions of group \(gi) "
                              + "(single_partition_of_fp32_groups[\(gi)]): \(error.description)")
                }
                for (i, (name, shape)) in shapes[gi].enumerated() {
                    let ps = DeepSpeedReader.pieces(offsets[i], numels[i], in: sizes)!
                    add(name, GatheredTensor(name: name, dtype: parts[0].ref.dtype, shape: shape,
                                             layout: .runs(ps.map { parts[$0.part].run($0.offset, $0.count) })),
                        pieces: Set(ps.map(\.part)).count)
                }
            }
        }

        /// `_zero3_merge_trainable_params` and `GatheredTensor.contiguous`.
        mutating func zero3Trainable() throws(CheckpointError) {
            // The groups' shapes merged into one dict (a name met again keeps its place, takes the last shape).
            var names: [String] = []
            var shapeOf: [String: [Int64]] = [:]
            for grp in models[0].paramShapes {
                for (n, s) in grp {
                    if shapeOf[n] == nil { names.append(n) }
                    shapeOf[n] = s
                }
            }
            let groups = optim.groups
            let ws = optim.worldSize
            let sizes = groups[0].map(\.numel)
            for (r, g) in groups.enumerated() {
                guard g.map(\.numel) == sizes else {
                    throw bad(optim.files[r], "its fp32 groups hold \(g.map(\.numel)) elements, rank 0's \(sizes)")
                }
                for (gi, t) in g.enumerated() where t.ref.dtype != groups[0][0].ref.dtype {
                    throw bad(optim.files[r], "fp32 group \(gi) is \(t.ref.dtype.rawValue), rank 0's first \(groups[0][0].ref.dtype.rawValue)")
                }
            }
            let numels = names.map { shapeOf[$0]!.reduce(1, *) }
            let offsets: [Int64]
            do {
                offsets = try DeepSpeedReader.zero3Offsets(numels: numels, worldSize: ws, rankElements: sizes.reduce(0, +))
            } catch {
                throw bad(models[0].file, "param_shapes does not fit the ranks' fp32 partitions (fp32_flat_groups): \(error.description)")
            }
            for (i, name) in names.enumerated() {
                let pn = DeepSpeedReader.partitioned(numels[i], ws)
                var runs: [ByteRun] = []
                var ranks = Set<Int>()
                var left = numels[i]
                for r in 0..<ws where left > 0 {
                    let ps = DeepSpeedReader.pieces(offsets[i], min(pn, left), in: sizes)!
                    for p in ps { runs.append(groups[r][p.part].run(p.offset, p.count)) }
                    ranks.insert(r)
                    left -= min(pn, left)
                }
                add(name, GatheredTensor(name: name, dtype: groups[0][0].ref.dtype, shape: shapeOf[name]!, layout: .runs(runs)),
                    pieces: ranks.count)
            }
        }
    }
}

// MARK: - Layout for info

extension DeepSpeedReader.Reading {
    func layout(models: [DeepSpeedReader.ModelState], optim: DeepSpeedReader.OptimStates,
                assembled: DeepSpeedReader.Assembled) throws(CheckpointError) -> DistributedLayout
    {
        let m0 = models[0]
        let v0 = DeepSpeedReader.Values(g: opened[m0.file].graph)
        var modelBytes: Int64 = 0
        for t in assembled.tensors { modelBytes += t.numel * Int64(t.dtype.itemSize) }
        // The base optimizer's state (Adam's exp_avg, exp_avg_sq, step, ...) in every optimizer file.
        var optimizerBytes: Int64 = 0
        let inner = optim.stage <= 2 ? "base_optimizer_state" : "optimizer_state_dict"
        for f in optim.files {
            let g = opened[f].graph
            guard let o = g.lookup(g.root, "optimizer_state_dict"), let base = g.lookup(o, inner) else { continue }
            var seen = Set<NodeID>()
            for t in try g.allTensors(from: base, limits: limits) where seen.insert(t.tensor.node).inserted {
                optimizerBytes += t.tensor.byteCount ?? 0
            }
        }
        let skip: Set<String> = ["module", "buffer_names", "param_shapes", "frozen_param_shapes", "frozen_param_fragments"]
        let vo = DeepSpeedReader.Values(g: opened[optim.files[0]].graph)
        var other: [(name: String, value: String)] = [("zero_stage", String(optim.stage)),
                                                      ("partition_count", vo.render(optim.partitionCountNode))]
        other += m0.top.filter { !skip.contains($0.key) }.map { ($0.key, v0.render($0.value)) }
        var notes: [String] = []
        if !assembled.leftOut.isEmpty {
            notes.append("\(assembled.leftOut.count) tensor\(assembled.leftOut.count == 1 ? "" : "s") of the model file's module "
                         + "\(assembled.leftOut.count == 1 ? "is" : "are") not in zero_to_fp32's result"
                         + (optim.stage <= 1 ? " (stage 1 saves no fp32 copy of frozen parameters)" : "")
                         + ": " + assembled.leftOut.prefix(8).joined(separator: ", ") + (assembled.leftOut.count > 8 ? ", ..." : ""))
        }
        let chunks = assembled.entries.map { (name: $0.name, count: assembled.pieces[$0.tensor]) }
        return DistributedLayout(format: "DeepSpeed ZeRO stage \(optim.stage)", worldSize: optim.worldSize,
                                 files: models.map { opened[$0.file].name } + optim.files.map { opened[$0].name },
                                 chunks: chunks, modelBytes: modelBytes,
                                 optimizerBytes: optimizerBytes, otherItems: other, notes: notes,
                                 torchLoads: DeepSpeedReader.torchLoads)
    }
}
