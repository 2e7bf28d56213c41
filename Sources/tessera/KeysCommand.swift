import ArgumentParser
import Foundation
import TesseraSecurity
import ZeroMQ

/// `tessera keys`: the cluster's CURVE keys — who may run as a worker and who may ask questions.
struct KeysCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "keys",
        abstract: "Make and list a cluster's keys: the scheduler's, each worker's and each user's.",
        discussion: """
            A cluster's key folder holds scheduler.key (secret), workers.list and users.list (the \
            public keys admitted), and the key files it made for workers and users. Give each \
            worker host its worker-NAME.key and each user their user-NAME.key: one file holds \
            the holder's key pair and the scheduler's public key. A user may also make their own \
            key (`tessera keys new`) and send only its public key to the operator (`tessera keys admit`).
            """,
        subcommands: [Init.self, AddWorker.self, AddUser.self, New.self, Admit.self, List.self])

    struct Folder: ParsableArguments {
        @Option(help: "The cluster's key folder.")
        var dir = "tessera-data/keys"
    }

    struct Init: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Make the scheduler's key (once; an existing one is kept).")
        @OptionGroup var folder: Folder
        func run() throws {
            let k = try KeyDirectory(folder.dir).initialize()
            print("scheduler key: \(KeyDirectory(folder.dir).schedulerKeyPath)\n  public key: \(k.keys.publicKey)")
        }
    }

    struct AddWorker: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "add-worker", abstract: "Make a worker's key and admit it.")
        @Argument(help: "The worker's name (it registers under it).") var name: String
        @OptionGroup var folder: Folder
        func run() throws {
            let dir = KeyDirectory(folder.dir)
            try dir.add(.worker, name: name)
            print("worker `\(name)`: copy \(dir.workerKeyPath(name)) to its host and start it with --key FILE")
        }
    }

    struct AddUser: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "add-user", abstract: "Make a user's key and admit it.")
        @Argument(help: "The user's name (jobs show it).") var name: String
        @Flag(help: "An admin sees and cancels everyone's jobs.") var admin = false
        @OptionGroup var folder: Folder
        func run() throws {
            let dir = KeyDirectory(folder.dir)
            try dir.add(.user, name: name, admin: admin)
            print("user `\(name)`\(admin ? " (admin)" : ""): give them \(dir.userKeyPath(name)); they pass it with --key or $TESSERA_KEY")
        }
    }

    struct New: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Make a key pair of your own, for a cluster whose scheduler's public key you have.")
        @Argument(help: "Your name.") var name: String
        @Option(help: "The scheduler's public key (from its operator).") var schedulerKey: String
        @Option(help: "Where to write the key file.") var output: String
        func run() throws {
            guard CurveKeyPair.isValidKey(schedulerKey) else { throw ValidationError("--scheduler-key must be 40 Z85 characters") }
            let k = KeyFile(name: name, role: .user, keys: try CurveKeyPair.generate(), schedulerKey: schedulerKey)
            try k.write(to: output)
            print("wrote \(output); send your public key to the cluster's operator:\n  \(k.keys.publicKey)")
        }
    }

    struct Admit: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Admit a public key made elsewhere, as a user or a worker.")
        @Argument(help: "Its name.") var name: String
        @Argument(help: "Its public key (40 Z85 characters).") var publicKey: String
        @Flag(help: "Admit it as a worker (default: a user).") var worker = false
        @Flag(help: "An admin user.") var admin = false
        @OptionGroup var folder: Folder
        func run() throws {
            try KeyDirectory(folder.dir).admit(worker ? .worker : .user, name: name, publicKey: publicKey, admin: admin)
            print("admitted \(worker ? "worker" : "user") `\(name)` (a running scheduler reads the list again when that key connects)")
        }
    }

    struct List: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List the admitted workers and users.")
        @OptionGroup var folder: Folder
        func run() throws {
            let dir = KeyDirectory(folder.dir)
            let s = try KeyFile.read(dir.schedulerKeyPath)
            let a = try dir.accessList()
            print("scheduler  \(s.keys.publicKey)")
            for (key, e) in a.workers.sorted(by: { $0.value.name < $1.value.name }) { print("worker     \(key)  \(e.name)") }
            for (key, e) in a.users.sorted(by: { $0.value.name < $1.value.name }) { print("user       \(key)  \(e.name)\(e.isAdmin ? " (admin)" : "")") }
        }
    }
}
