package web

import "time"

// category is the help text for one listing category.
type category struct {
	Key     string
	Title   string // short, for table cells: "compromised machine (zombie)"
	Summary string
	Means   []string
	Do      []string
	Lasts   string
}

// categories are the help pages, in the order /help lists them.
var categories = []category{
	{
		Key:     "zombie",
		Title:   "Compromised machine (zombie)",
		Summary: "A computer at this address has been taken over and is sending mail on someone else's orders.",
		Means: []string{
			"Mail arrived from this address that came from malware, not from a mail server its owner runs: spam runs, phishing, or mail sent with stolen passwords. Machines like this are usually part of a botnet and are controlled remotely.",
			"The owner rarely notices anything. The machine may be a desktop, a server with an outdated web application, a router, a camera or any other device behind the address. If the address is shared (NAT), any device behind it may be the one.",
		},
		Do: []string{
			"Find the infected device: look for outgoing connections to port 25 from anything that is not your mail server. Your firewall or router logs usually show it.",
			"Run a security audit and a malware scan on every machine behind the address. Update or remove outdated web applications (CMS plugins, contact forms) on servers.",
			"Change the passwords of every mail account that sends from this address; stolen mailbox passwords are a common cause.",
			"Block outgoing port 25 for everything except your real mail server, so a new infection cannot send mail directly.",
			"Only then ask for removal: a listing that comes back right after removal counts against the address.",
		},
		Lasts: "Listings on the public lists usually expire a few days after the last spam was seen. Listings on this site's own list last until their expiry date or until they are removed.",
	},
	{
		Key:     "open-proxy",
		Title:   "Open proxy or open relay",
		Summary: "This address accepts connections or mail from anyone and passes them on, so spammers use it to hide.",
		Means: []string{
			"Something at this address relays mail, or proxies connections, for anyone on the Internet without asking for a password: an open SMTP relay, an HTTP or SOCKS proxy, a misconfigured VPN or a router with a forwarding feature left on.",
			"Spammers scan for such services all the time and send their mail through them, so the mail looks as if it came from you.",
		},
		Do: []string{
			"Check every open port on the address, not only 25: proxies often run on 80, 1080, 3128, 8080 or odd high ports. A port scan from outside your network shows what the world sees.",
			"Make sure no service, on any port, relays or proxies without authentication. A mail server must accept mail for other domains only from your own users after they log in.",
			"Close or firewall anything you do not need, then run a security audit: an open proxy you did not set up is a sign of a compromised machine.",
		},
		Lasts: "Public lists usually drop the listing some days after their scanners find the service closed. Listings on this site's own list last until their expiry date or until they are removed.",
	},
	{
		Key:     "spam-source",
		Title:   "Spam source",
		Summary: "Spam from this address reached spam traps or real users.",
		Means: []string{
			"Mail from this address was sent to addresses that never asked for it, or to spam traps: addresses that have never belonged to anyone, so every mail they receive is unsolicited.",
			"This can be a spammer, a mailing list bought or scraped instead of built with consent, a hijacked account on a legitimate server, or a form on a web site that lets anyone send mail.",
		},
		Do: []string{
			"Look at your mail server's log and queue for mail you did not mean to send: sudden volume, unknown senders, bounces to addresses you never wrote to.",
			"If an account was hijacked, change its password and look for how it was stolen. Secure web forms that send mail (a captcha, a rate limit, no free recipient field).",
			"If you send newsletters, send only to people who confirmed their subscription, and remove addresses that bounce.",
			"Run a security audit and malware scan of the servers that send mail.",
		},
		Lasts: "Public lists usually expire such listings after days to weeks without new spam. Listings on this site's own list last until their expiry date or until they are removed.",
	},
	{
		Key:     "dynamic",
		Title:   "Dynamic or residential address",
		Summary: "This address belongs to a range that should not send mail directly to other mail servers.",
		Means: []string{
			"The address is in a range that a provider uses for its customers' dial-up, cable, DSL, fibre or mobile lines, or in a range whose owner says it should not send mail directly. This is not an accusation: nothing bad has to have happened.",
			"Mail servers refuse direct mail from such ranges because almost all of it comes from infected home machines. Legitimate mail from these lines goes through the provider's mail relay.",
			"A reverse DNS name that looks generic (the IP's digits in the name, or words like dsl, dynamic, pool, dhcp, cable, ppp) is the usual sign of such a range.",
		},
		Do: []string{
			"From a dial-up, cable, DSL or mobile line: send your mail through your provider's mail relay (their smarthost or submission server, with your login), not directly.",
			"If this really is a mail server on a fixed address: ask your provider to give it a PTR record that names the server (e.g. mail.example.org) and that resolves back to the same IP. Every IP that sends mail needs a PTR record like that, not a generic one.",
			"Many lists of this kind let the owner of a static address remove it; follow the list's own removal page.",
		},
		Lasts: "Such listings do not expire by themselves: they describe the range, not an incident. They end when the range's owner says the address is a mail server, or when the reverse DNS is fixed.",
	},
	{
		Key:     "local",
		Title:   "Listed by this site",
		Summary: "The operator of this mail service listed this address on the site's own list.",
		Means: []string{
			"The operator of this mail service saw mail from this address that they did not want, or received complaints about it, and listed the address by hand. The reason field on the lookup page says why, where the operator gave one.",
		},
		Do: []string{
			"Fix what caused the listing first: see the other categories for the usual causes (infected machine, open relay or proxy, spam from a hijacked account, generic reverse DNS).",
			"Then ask for removal with the form on the lookup page. You get a mail with a link; once you confirm, the address is removed at once, or, if it has already been removed several times recently, the request waits for the operator.",
		},
		Lasts: "A listing on this site's own list lasts until the expiry date shown on the lookup page (if any) or until it is removed. A listing that comes back after a removal counts toward the number of self-service removals allowed.",
	},
}

func categoryByKey(key string) (category, bool) {
	for _, c := range categories {
		if c.Key == key {
			return c, true
		}
	}
	return category{}, false
}

// categoryTitle is the category in words, for tables.
func categoryTitle(key string) string {
	if c, ok := categoryByKey(key); ok {
		return c.Title
	}
	switch key {
	case "":
		return ""
	case "allow":
		return "Allow list (vouches for the address)"
	}
	return key
}

// fmtTime formats a time for pages: UTC, to the minute or second.
func fmtTime(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return t.UTC().Format("2006-01-02 15:04:05 UTC")
}
