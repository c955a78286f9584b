// swift-tools-version:6.0
import PackageDescription

let package = Package(
    name: "ckpt",
    platforms: [.macOS(.v13)],
    products: [
        .executable(name: "ckpt", targets: ["ckpt"]),
        .library(name: "CkptCore", targets: ["CkptCore"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
    ],
    targets: [
        .systemLibrary(
            name: "CLibzip",
            pkgConfig: "libzip",
            providers: [.apt(["libzip-dev"])]
        ),
        .target(
            name: "CkptCore",
            dependencies: ["CLibzip"]
        ),
        .executableTarget(
            name: "ckpt",
            dependencies: [
                "CkptCore",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),
        .testTarget(
            name: "CkptCoreTests",
            dependencies: ["CkptCore"]
        ),
    ]
)
