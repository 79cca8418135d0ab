// Readiness probe used by integration-tests/bin/kafka (compiled into the cache
// on first use). It proves that the broker really serves clients: it produces
// one record to a probe topic (auto-created), fetches it back at the offset the
// broker acknowledged, and commits that offset for a consumer group, so the
// group coordinator (__consumer_offsets) is up too. Retries until the deadline.
//
//   java -cp '<cache>/probe:<cache>/libs/*' KafkaProbe <bootstrap> <topic> <timeout-seconds> [broker-pid]
//
// Exit codes: 0 ready, 2 timed out, 3 the broker process (pid) died, 64 usage.

import java.time.Duration;
import java.util.List;
import java.util.Map;
import java.util.Optional;
import java.util.Properties;
import java.util.UUID;
import java.util.concurrent.TimeUnit;

import org.apache.kafka.clients.consumer.ConsumerConfig;
import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.clients.consumer.KafkaConsumer;
import org.apache.kafka.clients.consumer.OffsetAndMetadata;
import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerConfig;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.clients.producer.RecordMetadata;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.common.serialization.StringDeserializer;
import org.apache.kafka.common.serialization.StringSerializer;

public final class KafkaProbe {
    private static final class BrokerDied extends RuntimeException {
        BrokerDied() { super("broker process exited"); }
    }

    private static Optional<ProcessHandle> broker = Optional.empty();

    private static void checkBroker() {
        if (broker.isPresent() && !broker.get().isAlive()) {
            throw new BrokerDied();
        }
    }

    public static void main(String[] args) {
        if (args.length < 3) {
            System.err.println("usage: KafkaProbe <bootstrap> <topic> <timeout-seconds> [broker-pid]");
            System.exit(64);
        }
        String bootstrap = args[0];
        String topic = args[1];
        long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(Long.parseLong(args[2]));
        if (args.length > 3) {
            broker = ProcessHandle.of(Long.parseLong(args[3]));
            if (broker.isEmpty()) {
                System.err.println("broker pid " + args[3] + " is not running");
                System.exit(3);
            }
        }

        String lastError = "no attempt made";
        int attempt = 0;
        while (System.nanoTime() < deadline) {
            attempt++;
            try {
                checkBroker();
                long leftMs = Math.max(1000, TimeUnit.NANOSECONDS.toMillis(deadline - System.nanoTime()));
                probeOnce(bootstrap, topic, Math.min(leftMs, 15000));
                System.exit(0);
            } catch (BrokerDied e) {
                System.err.println("the broker process died");
                System.exit(3);
            } catch (Exception e) {
                Throwable root = e;
                while (root.getCause() != null && root.getCause() != root) {
                    root = root.getCause();
                }
                lastError = root.getClass().getSimpleName() + ": " + root.getMessage();
            }
            try {
                checkBroker();
                Thread.sleep(500);
            } catch (BrokerDied e) {
                System.err.println("the broker process died");
                System.exit(3);
            } catch (InterruptedException e) {
                Thread.currentThread().interrupt();
                break;
            }
        }
        System.err.println("not ready after " + attempt + " attempt(s); last error: " + lastError);
        System.exit(2);
    }

    private static void probeOnce(String bootstrap, String topic, long budgetMs) throws Exception {
        String payload = "probe-" + UUID.randomUUID();
        int requestTimeout = (int) Math.max(1000, Math.min(budgetMs, 5000));

        Properties p = new Properties();
        p.put(ProducerConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        p.put(ProducerConfig.CLIENT_ID_CONFIG, "lakewire-kafka-probe");
        p.put(ProducerConfig.ACKS_CONFIG, "all");
        p.put(ProducerConfig.LINGER_MS_CONFIG, 0);
        p.put(ProducerConfig.MAX_BLOCK_MS_CONFIG, budgetMs);
        p.put(ProducerConfig.REQUEST_TIMEOUT_MS_CONFIG, requestTimeout);
        p.put(ProducerConfig.DELIVERY_TIMEOUT_MS_CONFIG, (int) Math.max(budgetMs, requestTimeout));
        p.put(ProducerConfig.RETRY_BACKOFF_MS_CONFIG, 100);
        p.put(ProducerConfig.RECONNECT_BACKOFF_MAX_MS_CONFIG, 500);
        p.put(ProducerConfig.KEY_SERIALIZER_CLASS_CONFIG, StringSerializer.class.getName());
        p.put(ProducerConfig.VALUE_SERIALIZER_CLASS_CONFIG, StringSerializer.class.getName());

        RecordMetadata md;
        try (KafkaProducer<String, String> producer = new KafkaProducer<>(p)) {
            md = producer.send(new ProducerRecord<>(topic, "probe", payload)).get(budgetMs, TimeUnit.MILLISECONDS);
        }
        checkBroker();

        Properties c = new Properties();
        c.put(ConsumerConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        c.put(ConsumerConfig.CLIENT_ID_CONFIG, "lakewire-kafka-probe");
        c.put(ConsumerConfig.GROUP_ID_CONFIG, "lakewire-kafka-probe");
        c.put(ConsumerConfig.ENABLE_AUTO_COMMIT_CONFIG, false);
        c.put(ConsumerConfig.REQUEST_TIMEOUT_MS_CONFIG, requestTimeout);
        c.put(ConsumerConfig.DEFAULT_API_TIMEOUT_MS_CONFIG, (int) budgetMs);
        c.put(ConsumerConfig.RETRY_BACKOFF_MS_CONFIG, 100);
        c.put(ConsumerConfig.RECONNECT_BACKOFF_MAX_MS_CONFIG, 500);
        c.put(ConsumerConfig.KEY_DESERIALIZER_CLASS_CONFIG, StringDeserializer.class.getName());
        c.put(ConsumerConfig.VALUE_DESERIALIZER_CLASS_CONFIG, StringDeserializer.class.getName());

        TopicPartition tp = new TopicPartition(md.topic(), md.partition());
        long until = System.nanoTime() + TimeUnit.MILLISECONDS.toNanos(budgetMs);
        try (KafkaConsumer<String, String> consumer = new KafkaConsumer<>(c)) {
            consumer.assign(List.of(tp));
            consumer.seek(tp, md.offset());
            while (System.nanoTime() < until) {
                checkBroker();
                for (ConsumerRecord<String, String> r : consumer.poll(Duration.ofMillis(200))) {
                    if (payload.equals(r.value())) {
                        consumer.commitSync(Map.of(tp, new OffsetAndMetadata(r.offset() + 1)),
                                Duration.ofMillis(Math.max(1000, budgetMs)));
                        return;
                    }
                }
            }
        }
        throw new IllegalStateException("produced record at " + tp + "@" + md.offset() + " was not fetched back");
    }
}
