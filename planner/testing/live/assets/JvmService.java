// A JVM service fleet for ksm-planner's live validation harness: a primary JVM that starts N
// worker JVMs (one per port, as JVM services are deployed: the JVM does not fork) and stops
// them when it is stopped.
//
//   java -cp DIR JvmService primary --ports P1,P2,... --items N --ready-file PATH [-- JVM options]
//   java -cp DIR JvmService worker --port P --items N --ready-file PATH
//
// Each worker builds a catalogue of N items from a fixed seed (the same objects, allocated in
// the same order, in every worker), an index of its words, and a per-worker cache of random
// bytes, then serves GET /item?id=K (the item as JSON; each answer also replaces an entry of
// a bounded cache: live allocation that survives young collections) and GET /search?q=W (the
// items whose name holds W: an allocating scan). The primary writes the ready file once
// every worker has written its own. SIGTERM/SIGINT to the primary stops the workers.
import com.sun.net.httpserver.HttpExchange;
import com.sun.net.httpserver.HttpServer;
import java.io.IOException;
import java.io.OutputStream;
import java.net.InetSocketAddress;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.Random;
import java.util.concurrent.Executors;
import java.util.concurrent.TimeUnit;

public final class JvmService {
    private static final String[] WORDS = {
        "alpha", "beta", "gamma", "delta", "omega", "sigma", "kappa", "lambda", "theta", "zeta"
    };

    static final class Item {
        final int id;
        final String name;
        final String[] tags;
        final long priceCents;
        final byte[] blob;

        Item(int id, String name, String[] tags, long priceCents, byte[] blob) {
            this.id = id;
            this.name = name;
            this.tags = tags;
            this.priceCents = priceCents;
            this.blob = blob;
        }

        String json() {
            return "{\"id\":" + id + ",\"name\":\"" + name + "\",\"tags\":[\"" + String.join("\",\"", tags)
                    + "\"],\"price_cents\":" + priceCents + ",\"blob\":" + blob.length + "}";
        }
    }

    private static String arg(String[] args, String name, String dflt) {
        for (int i = 0; i + 1 < args.length; i++) {
            if (args[i].equals("--")) {
                break;
            }
            if (args[i].equals(name)) {
                return args[i + 1];
            }
        }
        if (dflt == null) {
            throw new IllegalArgumentException("missing " + name);
        }
        return dflt;
    }

    public static void main(String[] args) throws Exception {
        if (args.length > 0 && args[0].equals("primary")) {
            primary(args);
        } else if (args.length > 0 && args[0].equals("worker")) {
            worker(args);
        } else {
            System.err.println("usage: JvmService primary|worker ...");
            System.exit(2);
        }
    }

    private static void primary(String[] args) throws Exception {
        String[] ports = arg(args, "--ports", null).split(",");
        String items = arg(args, "--items", "20000");
        Path ready = Path.of(arg(args, "--ready-file", null));
        List<String> jvmOptions = new ArrayList<>();
        int dash = Arrays.asList(args).indexOf("--");
        if (dash >= 0) {
            jvmOptions.addAll(Arrays.asList(args).subList(dash + 1, args.length));
        }
        String java = Path.of(System.getProperty("java.home"), "bin", "java").toString();
        String classPath = System.getProperty("java.class.path");
        List<Process> workers = new ArrayList<>();
        List<Path> readies = new ArrayList<>();
        Runtime.getRuntime().addShutdownHook(new Thread(() -> {
            for (Process p : workers) {
                p.destroy();
            }
            for (Process p : workers) {
                try {
                    if (!p.waitFor(20, TimeUnit.SECONDS)) {
                        p.destroyForcibly();
                    }
                } catch (InterruptedException e) {
                    p.destroyForcibly();
                }
            }
        }));
        for (int i = 0; i < ports.length; i++) {
            Path r = Path.of(ready + "." + i);
            readies.add(r);
            List<String> cmd = new ArrayList<>();
            cmd.add(java);
            cmd.addAll(jvmOptions);
            cmd.addAll(List.of("-cp", classPath, "JvmService", "worker", "--port", ports[i],
                    "--items", items, "--ready-file", r.toString()));
            workers.add(new ProcessBuilder(cmd).inheritIO().start());
        }
        for (int i = 0; i < readies.size(); i++) {
            while (!Files.exists(readies.get(i))) {
                if (!workers.get(i).isAlive()) {
                    System.err.println("worker " + i + " exited with " + workers.get(i).exitValue());
                    System.exit(1);
                }
                Thread.sleep(50);
            }
        }
        Path tmp = Path.of(ready + ".tmp");
        Files.writeString(tmp, String.join(",", ports) + "\n");
        Files.move(tmp, ready);
        for (Process p : workers) {
            p.waitFor();
        }
    }

    private static void worker(String[] args) throws Exception {
        int port = Integer.parseInt(arg(args, "--port", null));
        int n = Integer.parseInt(arg(args, "--items", "20000"));
        Path ready = Path.of(arg(args, "--ready-file", null));
        // the catalogue: the same seed, the same allocations, in every worker
        Random seeded = new Random(42);
        List<Item> catalogue = new ArrayList<>(n);
        Map<String, List<Item>> index = new HashMap<>();
        for (int i = 0; i < n; i++) {
            String name = WORDS[seeded.nextInt(WORDS.length)] + "-" + WORDS[seeded.nextInt(WORDS.length)]
                    + "-" + i;
            String[] tags = {WORDS[seeded.nextInt(WORDS.length)], WORDS[seeded.nextInt(WORDS.length)]};
            byte[] blob = new byte[64 + seeded.nextInt(192)];
            seeded.nextBytes(blob);
            Item item = new Item(i, name, tags, seeded.nextInt(1_000_000), blob);
            catalogue.add(item);
            for (String t : tags) {
                index.computeIfAbsent(t, k -> new ArrayList<>()).add(item);
            }
        }
        // a per-worker cache: random bytes of this process alone
        Random own = new Random(ProcessHandle.current().pid() * 7919L + System.nanoTime());
        int cacheSize = Math.max(1, n / 4);
        byte[][] cache = new byte[cacheSize][];
        for (int i = 0; i < cacheSize; i++) {
            cache[i] = new byte[256];
            own.nextBytes(cache[i]);
        }
        HttpServer server = HttpServer.create(new InetSocketAddress("127.0.0.1", port), 64);
        server.setExecutor(Executors.newFixedThreadPool(2));
        server.createContext("/item", ex -> {
            int id = Math.floorMod(Integer.parseInt(query(ex, "id", "0")), n);
            Item item = catalogue.get(id);
            synchronized (cache) {
                byte[] fresh = new byte[256];
                own.nextBytes(fresh);
                cache[Math.floorMod(id, cacheSize)] = fresh;
            }
            reply(ex, item.json());
        });
        server.createContext("/search", ex -> {
            String q = query(ex, "q", "alpha");
            StringBuilder out = new StringBuilder("[");
            int hits = 0;
            for (Item item : catalogue) {
                if (item.name.contains(q) && hits < 50) {
                    out.append(hits++ == 0 ? "" : ",").append(item.json());
                }
            }
            reply(ex, out.append("]").toString());
        });
        server.start();
        Path tmp = Path.of(ready + ".tmp");
        Files.writeString(tmp, port + "\n");
        Files.move(tmp, ready);
    }

    private static String query(HttpExchange ex, String key, String dflt) {
        String q = ex.getRequestURI().getRawQuery();
        if (q != null) {
            for (String kv : q.split("&")) {
                int eq = kv.indexOf('=');
                if (eq > 0 && kv.substring(0, eq).equals(key)) {
                    return kv.substring(eq + 1);
                }
            }
        }
        return dflt;
    }

    private static void reply(HttpExchange ex, String body) throws IOException {
        byte[] bytes = body.getBytes(StandardCharsets.UTF_8);
        ex.getResponseHeaders().set("Content-Type", "application/json");
        ex.sendResponseHeaders(200, bytes.length);
        try (OutputStream os = ex.getResponseBody()) {
            os.write(bytes);
        }
    }
}
