/*
 * The broker's request counts by type, read from its JMX through the attach API (the way jcmd does): prints one
 * JSON object {"Produce": n, "Fetch": n, ...}. Run from source by bench/common.py: java BrokerRequests.java PID.
 * "FetchConsumer" and "FetchFollower" are Kafka's sub-counts of "Fetch"; "WriteTxnMarkers" and
 * "AddPartitionsToTxnVerification" are requests the broker sends itself (transaction markers, KIP-890 checks).
 */
import com.sun.tools.attach.VirtualMachine;
import java.util.Map;
import java.util.TreeMap;
import javax.management.MBeanServerConnection;
import javax.management.ObjectName;
import javax.management.remote.JMXConnector;
import javax.management.remote.JMXConnectorFactory;
import javax.management.remote.JMXServiceURL;

public class BrokerRequests {
    public static void main(String[] args) throws Exception {
        VirtualMachine vm = VirtualMachine.attach(args[0]);
        String address = vm.startLocalManagementAgent();
        vm.detach();
        try (JMXConnector c = JMXConnectorFactory.connect(new JMXServiceURL(address))) {
            MBeanServerConnection s = c.getMBeanServerConnection();
            Map<String, Long> counts = new TreeMap<>();
            for (ObjectName n : s.queryNames(new ObjectName("kafka.network:type=RequestMetrics,name=RequestsPerSec,*"), null)) {
                counts.merge(n.getKeyProperty("request"), ((Number) s.getAttribute(n, "Count")).longValue(), Long::sum);
            }
            StringBuilder out = new StringBuilder("{");
            for (Map.Entry<String, Long> e : counts.entrySet()) {
                if (out.length() > 1) out.append(", ");
                out.append('"').append(e.getKey()).append("\": ").append(e.getValue());
            }
            System.out.println(out.append('}'));
        }
    }
}
