import Foundation
import Testing
@testable import CkptCore

/// Which container torch.load reads, and the other readings (`ContainerAudit`), on fixtures/containers (made by
/// scripts/make-container-fixtures.py; `facts.json` says what torch reads, checked against real torch.load by
/// Tests/interop/test_containers_as_torch_reads.py) and on the clean fixtures.
@Suite struct ContainerAuditTests {
    struct Fact: Sendable { var ambiguous: Bool; var payload: Bool }
    static let facts: [String: Fact] = {
        let data = try! Data(contentsOf: URL(fileURLWithPath: Oracle.fixture("containers/facts.json")))
        let raw = try! JSONSerialization.jsonObject(with: data) as! [String: [String: Any]]
        return raw.mapValues { Fact(ambiguous: $0["scan"] as! String == "ambiguous", payload: $0["payload"] as! Bool) }
    }()

    @Test(arguments: Self.facts.keys.sorted())
    func containerFixtureIsAmbiguousAsTheFactsSay(name: String) throws {
        let audit = ContainerAudit(file: Oracle.fixture("containers/\(name)"))
        #expect(audit.isAmbiguous == Self.facts[name]!.ambiguous, "\(audit.ambiguities)")
        let report = try ScanBuilder(path: Oracle.fixture("containers/\(name)")).build()
        #expect(report.isAmbiguous || report.isDangerous)
        if Self.facts[name]!.payload {
            #expect(report.dangerous.map(\.name).contains("builtins.exec"))
        }
    }

    @Test(arguments: ["resnet-sd.pt", "sd-legacy.pt", "yolov5s-train.pt", "ultralytics-train.pt", "dtypes.pt",
                      "mmlab-style.pt", "sd-proto4.pt", "legacy/lpips-v0.1-alex.pth", "legacy/torch01-tar.pt", "legacy/py2-torch03-sd.pth"])
    func cleanFixtureHasOneReading(name: String) {
        let path = Oracle.fixture(name)
        #expect(FileManager.default.fileExists(atPath: path))
        let audit = ContainerAudit(file: path)
        #expect(audit.ambiguities == [])
    }

    @Test func torchReadsTheZipOnlyWithTheMagicAtByteZero() throws {
        let a = ContainerAudit(file: Oracle.fixture("containers/pickle-then-zip.pt"))
        #expect(a.reading == .pickleStream)
        #expect(ContainerAudit(file: Oracle.fixture("containers/tar-named-pk-then-zip.pt")).reading == .legacyTar)
        #expect(ContainerAudit(file: Oracle.fixture("containers/tar-named-pk0304-zip.pt")).reading == .zip)
    }

    /// miniz's heap sort leaves the names in folded order, and its binary search finds a folded-equal name.
    @Test func minizOrderIsSortedAndSearchFindsFoldedNames() {
        var rng = SystemRandomNumberGenerator()
        for _ in 0..<50 {
            let names: [[UInt8]] = (0..<Int.random(in: 1...40, using: &rng)).map { _ in
                (0..<Int.random(in: 0...6, using: &rng)).map { _ in Array("aAbB/0.".utf8).randomElement(using: &rng)! }
            }
            let order = MinizLookup.sortedOrder(names)
            #expect(order.sorted() == Array(names.indices))
            for (x, y) in zip(order, order.dropFirst()) { #expect(!MinizLookup.less(names[y], names[x])) }
            for (i, n) in names.enumerated() {
                let query = n.map { $0 >= 0x61 && $0 <= 0x7A ? $0 - 0x20 : $0 }  // upper-cased: found regardless of case
                let found = MinizLookup.find(query, names: names, order: order)
                #expect(found.map { MinizLookup.compare(names[$0], n) == 0 } == true, "\(i)")
            }
        }
    }

    /// The backward search for the end record stops where miniz's does: after the 4096-byte block (stepping by
    /// 4093) that starts 65,557 bytes or more before the end.
    @Test func endRecordSearchWindow() {
        #expect(ZipCentralDirectory.endRecordSearchStart(fileSize: 100) == 0)
        #expect(ZipCentralDirectory.endRecordSearchStart(fileSize: 4096) == 0)
        let size: UInt64 = 1 << 20
        let start = ZipCentralDirectory.endRecordSearchStart(fileSize: size)
        #expect(size - start == 4096 + 16 * 4093)
    }
}
