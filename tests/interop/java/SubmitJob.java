// Submits a ksched job without any of ksched's code: Apache Avro's reference implementation reads the
// .avsc files and writes Avro single-object encoding; the plain Java Kafka client produces it.
//
//   java -cp 'libs/*' SubmitJob.java BOOTSTRAP TOPIC SCHEMA_DIR JOB_ID DIGEST NAME SIZE COMMAND_ID NOW_MS
import java.io.File;
import java.io.FileInputStream;
import java.nio.ByteBuffer;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import org.apache.avro.Schema;
import org.apache.avro.generic.GenericData;
import org.apache.avro.generic.GenericRecord;
import org.apache.avro.generic.GenericRecordBuilder;
import org.apache.avro.message.BinaryMessageEncoder;
import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.common.serialization.ByteArraySerializer;
import org.apache.kafka.common.serialization.StringSerializer;

public class SubmitJob {
    public static void main(String[] a) throws Exception {
        String bootstrap = a[0], topic = a[1], jobId = a[3], digest = a[4], name = a[5], commandId = a[7];
        File dir = new File(a[2]);
        long size = Long.parseLong(a[6]), now = Long.parseLong(a[8]);

        // Named types first, so the files that use them can refer to them by name.
        Schema.Parser parser = new Schema.Parser();
        for (String n : new String[] {"ArtifactRef", "RetryPolicy", "Level", "Limits", "TaskSpec", "Schedule",
                                      "JobSpec", "SubmitJob"}) {
            parser.parse(new File(dir, "ksched." + n + ".avsc"));
        }
        Map<String, Schema> types = parser.getTypes();

        GenericRecord artifact = new GenericRecordBuilder(types.get("ksched.ArtifactRef"))
            .set("digest", digest).set("name", name).set("size", size).build();
        GenericRecord task = new GenericRecordBuilder(types.get("ksched.TaskSpec"))
            .set("name", "main").set("artifact", artifact).set("args", List.of("from-java")).build();
        GenericRecord job = new GenericRecordBuilder(types.get("ksched.JobSpec"))
            .set("job_id", jobId).set("tasks", List.of(task)).set("description", "submitted from Java").build();
        Schema submit = types.get("ksched.SubmitJob");
        GenericRecord command = new GenericRecordBuilder(submit)
            .set("command_id", commandId).set("job", job).set("submitted_at_ms", now).set("submitted_by", "java")
            .build();

        ByteBuffer buf = new BinaryMessageEncoder<GenericRecord>(GenericData.get(), submit).encode(command);
        byte[] bytes = new byte[buf.remaining()];
        buf.get(bytes);

        Properties props = new Properties();
        props.put("bootstrap.servers", bootstrap);
        props.put("key.serializer", StringSerializer.class.getName());
        props.put("value.serializer", ByteArraySerializer.class.getName());
        if (a.length > 9) {  // a secured cluster: the Java client's own security settings
            try (FileInputStream in = new FileInputStream(a[9])) {
                props.load(in);
            }
        }
        try (KafkaProducer<String, byte[]> producer = new KafkaProducer<>(props)) {
            producer.send(new ProducerRecord<>(topic, jobId, bytes)).get();
        }
        System.out.println("sent " + bytes.length + " bytes for " + jobId);
    }
}
