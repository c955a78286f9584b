/// How torch's zip reader finds a record by name, so that ckpt reads the record torch reads.
///
/// caffe2/serialize/inline_container.cc (`PyTorchStreamReader::getRecordID`, `hasRecord`) calls miniz's
/// `mz_zip_reader_locate_file(archive, name, nullptr, 0)`. With flags 0 and a sorted central directory (miniz sorts
/// it when the reader opens), `mz_zip_reader_locate_file_v2` takes `mz_zip_locate_file_binary_search`: names are
/// compared byte by byte after folding ASCII `A`-`Z` to lower case (`MZ_TOLOWER`), a shorter name sorting first
/// when one is a prefix of the other; the order is made by `mz_zip_reader_sort_central_dir_offsets_by_filename`, a
/// heap sort. Two names that fold to the same bytes (`DATA.PKL`, `data.pkl`) or duplicates are equal to the search,
/// and which one it meets depends on where the heap sort left them: this type repeats both steps exactly (same
/// sift-down, same midpoints), so the answer is torch's, not merely one of the candidates.
enum MinizLookup {
    /// `MZ_TOLOWER`: ASCII upper case to lower case, every other byte unchanged.
    @inline(__always) static func lower(_ b: UInt8) -> UInt8 { b >= 0x41 && b <= 0x5A ? b | 0x20 : b }

    /// A name with ASCII upper case folded (the key under which names that torch cannot tell apart meet).
    static func fold(_ name: String) -> String {
        guard name.utf8.contains(where: { $0 >= 0x41 && $0 <= 0x5A }) else { return name }
        return String(decoding: name.utf8.map(lower), as: UTF8.self)
    }

    /// `mz_zip_reader_filename_less`: folded bytewise order; on a common prefix the shorter name first.
    static func less(_ l: [UInt8], _ r: [UInt8]) -> Bool {
        let n = min(l.count, r.count)
        var i = 0
        while i < n {
            let (a, b) = (lower(l[i]), lower(r[i]))
            if a != b { return a < b }
            i += 1
        }
        return l.count < r.count
    }

    /// `mz_zip_filename_compare`: negative, zero or positive as `l` sorts before, with or after `r`.
    static func compare(_ l: [UInt8], _ r: [UInt8]) -> Int {
        let n = min(l.count, r.count)
        var i = 0
        while i < n {
            let (a, b) = (lower(l[i]), lower(r[i]))
            if a != b { return Int(a) - Int(b) }
            i += 1
        }
        return l.count - r.count
    }

    /// The record indices in the order miniz's heap sort leaves them: build a max-heap sifting down from the last
    /// parent, then repeatedly swap the root to the end and sift the new root down.
    static func sortedOrder(_ names: [[UInt8]]) -> [Int] {
        var order = Array(names.indices)
        let size = order.count
        guard size > 1 else { return order }
        func siftDown(_ root: Int, _ end: Int) {
            var root = root
            while true {
                var child = root * 2 + 1
                if child >= end { return }
                if child + 1 < end && less(names[order[child]], names[order[child + 1]]) { child += 1 }
                if !less(names[order[root]], names[order[child]]) { return }
                order.swapAt(root, child)
                root = child
            }
        }
        var start = (size - 2) >> 1
        while true {
            siftDown(start, size)
            if start == 0 { break }
            start -= 1
        }
        var end = size - 1
        while end > 0 {
            order.swapAt(end, 0)
            siftDown(0, end)
            end -= 1
        }
        return order
    }

    /// `mz_zip_locate_file_binary_search` over `order`: the index of the first record the search meets whose
    /// folded name equals the folded `query`, or nil.
    static func find(_ query: [UInt8], names: [[UInt8]], order: [Int]) -> Int? {
        var l = 0, h = order.count - 1
        while l <= h {
            let m = l + (h - l) >> 1
            let c = compare(names[order[m]], query)
            if c == 0 { return order[m] }
            if c < 0 { l = m + 1 } else { h = m - 1 }
        }
        return nil
    }
}
